//! Holds `template.yaml` (the SAM bundle) to the code: the table's keys and index
//! are `samosachaat::adapters::store::schema`'s, every function gets the configuration
//! `Config::from_env` reads, the streaming functions stream, each role allows
//! only the DynamoDB actions its function uses, on the table and its index, and
//! every alarm and dashboard chart reads a metric `samosachaat::adapters::metrics` writes,
//! with the dimensions it writes it with.
//!
//! The template is read with a small CloudFormation-aware loader over
//! yaml-rust2's events: short tags become their long form (`!Ref X` is
//! `{"Ref": "X"}`, `!GetAtt A.B` is `{"Fn::GetAtt": ["A", "B"]}`, `!Sub s` is
//! `{"Fn::Sub": s}`), so the tests see the template as CloudFormation does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use samosachaat::adapters::store::schema::{KEY_ATTRIBUTES, TABLE_KEYS, USER_INDEX_KEYS};
use samosachaat::adapters::store::USER_INDEX;
use samosachaat::foundation::config::Config;
use serde_json::{json, Map, Value};
use yaml_rust2::parser::{Event, EventReceiver, Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;

// ---------------------------------------------------------------------------
// Loading

#[derive(Default)]
struct Loader {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    documents: Vec<Value>,
}

enum Frame {
    Seq(Vec<Value>, usize, Option<Tag>),
    Map(Map<String, Value>, Option<String>, usize, Option<Tag>),
}

impl EventReceiver for Loader {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let value = intrinsic(tag.as_ref(), scalar(text, style, tag.as_ref()));
                self.push(value, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                self.stack.push(Frame::Seq(Vec::new(), anchor, tag))
            }
            Event::MappingStart(anchor, tag) => {
                self.stack.push(Frame::Map(Map::new(), None, anchor, tag))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, anchor, tag)) => {
                        (intrinsic(tag.as_ref(), Value::Array(items)), anchor)
                    }
                    Some(Frame::Map(map, _, anchor, tag)) => {
                        (intrinsic(tag.as_ref(), Value::Object(map)), anchor)
                    }
                    None => panic!("unbalanced YAML events"),
                };
                self.push(value, anchor);
            }
            Event::Alias(id) => {
                let value = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .expect("alias to a known anchor");
                self.push(value, 0);
            }
            _ => {}
        }
    }
}

impl Loader {
    fn push(&mut self, value: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(value),
            Some(Frame::Seq(items, ..)) => items.push(value),
            Some(Frame::Map(map, key, ..)) => match key.take() {
                Some(k) => {
                    assert!(map.insert(k.clone(), value).is_none(), "duplicate key {k}");
                }
                None => {
                    *key = Some(match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                }
            },
        }
    }
}

/// A plain scalar is typed as YAML's core schema says; quoted, block and
/// tagged scalars are strings (an intrinsic's argument is a string).
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if style != TScalarStyle::Plain || tag.is_some() {
        return Value::String(text);
    }
    match text.as_str() {
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        _ => {
            if let Ok(i) = text.parse::<i64>() {
                json!(i)
            } else if let Some(f) = text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && text.chars().any(|c| c.is_ascii_digit()))
            {
                json!(f)
            } else {
                Value::String(text)
            }
        }
    }
}

/// `!Ref x` -> `{"Ref": x}`, `!GetAtt A.B` -> `{"Fn::GetAtt": ["A", "B"]}`,
/// `!Name x` -> `{"Fn::Name": x}`; other values unchanged.
fn intrinsic(tag: Option<&Tag>, value: Value) -> Value {
    let Some(tag) = tag.filter(|t| t.handle == "!") else {
        return value;
    };
    let (key, value) = match (tag.suffix.as_str(), value) {
        ("Ref", v) => ("Ref".to_owned(), v),
        ("Condition", v) => ("Condition".to_owned(), v),
        ("GetAtt", Value::String(s)) => {
            let (resource, attribute) = s.split_once('.').expect("!GetAtt Resource.Attribute");
            ("Fn::GetAtt".to_owned(), json!([resource, attribute]))
        }
        (name, v) => (format!("Fn::{name}"), v),
    };
    json!({ key: value })
}

fn load(source: &str) -> Value {
    let mut loader = Loader::default();
    Parser::new_from_str(source)
        .load(&mut loader, false)
        .expect("template.yaml is valid YAML");
    assert!(loader.stack.is_empty());
    loader.documents.into_iter().next().expect("one document")
}

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    load(&source)
}

// ---------------------------------------------------------------------------
// Reading the template

fn resources_of_type<'a>(t: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    t["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(id, r)| (id.as_str(), r))
        .collect()
}

fn the_table(t: &Value) -> (&str, &Value) {
    let tables = resources_of_type(t, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1, "exactly one table");
    tables[0]
}

/// `[(name, type)]` of a KeySchema, in order.
fn key_schema(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("KeySchema is a list")
        .iter()
        .map(|k| {
            (
                k["AttributeName"]
                    .as_str()
                    .expect("AttributeName")
                    .to_owned(),
                k["KeyType"].as_str().expect("KeyType").to_owned(),
            )
        })
        .collect()
}

fn expected_keys(keys: &[(&str, &str)]) -> Vec<(String, String)> {
    keys.iter()
        .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
        .collect()
}

/// The function's property, else the Globals' one.
fn function_property<'a>(t: &'a Value, function: &'a Value, name: &str) -> &'a Value {
    match &function["Properties"][name] {
        Value::Null => &t["Globals"]["Function"][name],
        v => v,
    }
}

/// The environment a function gets: Globals' variables overlaid by its own.
fn environment(t: &Value, function: &Value) -> Map<String, Value> {
    let mut env = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(own) = function["Properties"]["Environment"]["Variables"].as_object() {
        env.extend(own.clone());
    }
    env
}

/// Evaluates what the variables use: plain values, `Ref` to a parameter (its
/// default, else `given`) or to the table, and `Fn::Join`.
fn resolve(t: &Value, v: &Value, given: &HashMap<&str, &str>) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(o) if o.contains_key("Ref") => {
            let name = o["Ref"].as_str().expect("Ref to a name");
            if t["Resources"].get(name).is_some() {
                return format!("resource:{name}");
            }
            let param = &t["Parameters"][name];
            assert!(!param.is_null(), "Ref to unknown {name}");
            match given.get(name) {
                Some(v) => (*v).to_owned(),
                None => resolve(t, &param["Default"], given),
            }
        }
        Value::Object(o) if o.contains_key("Fn::Join") => {
            let args = o["Fn::Join"].as_array().expect("Fn::Join [sep, list]");
            let sep = args[0].as_str().expect("separator");
            match &args[1] {
                Value::Array(items) => items
                    .iter()
                    .map(|i| resolve(t, i, given))
                    .collect::<Vec<_>>()
                    .join(sep),
                list => resolve(t, list, given)
                    .split(',')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(sep),
            }
        }
        other => panic!("cannot evaluate {other}"),
    }
}

const FUNCTIONS: [(&str, &str, bool); 3] = [
    ("SendFunction", "send", true),
    ("RegenerateFunction", "regenerate", true),
    ("ConversationsFunction", "conversations", false),
];

fn function<'a>(t: &'a Value, id: &str) -> &'a Value {
    let f = &t["Resources"][id];
    assert_eq!(f["Type"], "AWS::Serverless::Function", "{id}");
    f
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn loader_reads_cloudformation_short_tags() {
    let v = load(
        "a: !Ref X\nb: !GetAtt T.Arn\nc: !Sub \"${T.Arn}/index/i\"\nd: !Join [\",\", !Ref L]\n\
         e: 0.8\nf: '0.8'\ng: [1, true, ~]\n",
    );
    assert_eq!(
        v,
        json!({
            "a": {"Ref": "X"},
            "b": {"Fn::GetAtt": ["T", "Arn"]},
            "c": {"Fn::Sub": "${T.Arn}/index/i"},
            "d": {"Fn::Join": [",", {"Ref": "L"}]},
            "e": 0.8,
            "f": "0.8",
            "g": [1, true, null],
        })
    );
}

#[test]
fn table_has_the_code_key_schema_and_user_index() {
    let t = template();
    let (_, table) = the_table(&t);
    let p = &table["Properties"];

    assert_eq!(key_schema(&p["KeySchema"]), expected_keys(&TABLE_KEYS));

    let definitions: BTreeMap<String, String> = p["AttributeDefinitions"]
        .as_array()
        .expect("AttributeDefinitions")
        .iter()
        .map(|d| {
            (
                d["AttributeName"].as_str().expect("name").to_owned(),
                d["AttributeType"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = KEY_ATTRIBUTES
        .iter()
        .map(|a| ((*a).to_owned(), "S".to_owned()))
        .collect();
    assert_eq!(definitions, expected, "key attributes, all strings");

    let indexes = p["GlobalSecondaryIndexes"].as_array().expect("one GSI");
    assert_eq!(indexes.len(), 1);
    let index = &indexes[0];
    assert_eq!(index["IndexName"], USER_INDEX);
    assert_eq!(
        key_schema(&index["KeySchema"]),
        expected_keys(&USER_INDEX_KEYS)
    );
    assert_eq!(index["Projection"]["ProjectionType"], "ALL");
    assert!(p["LocalSecondaryIndexes"].is_null());
}

#[test]
fn table_keeps_its_data() {
    let t = template();
    let (_, table) = the_table(&t);
    let p = &table["Properties"];
    assert_eq!(table["DeletionPolicy"], "Retain");
    assert_eq!(table["UpdateReplacePolicy"], "Retain");
    assert_eq!(p["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(p["SSESpecification"]["SSEEnabled"], true);
    assert_eq!(
        p["TimeToLiveSpecification"],
        json!({"AttributeName": "expires_at", "Enabled": true})
    );
    assert!(
        p["TableName"].is_null(),
        "a generated name: stacks can coexist"
    );
}

#[test]
fn functions_are_built_and_exposed_as_the_spec_says() {
    let t = template();
    for (id, binary, streaming) in FUNCTIONS {
        let f = function(&t, id);
        assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda", "{id}");
        assert_eq!(f["Metadata"]["BuildProperties"]["Binary"], binary, "{id}");
        assert_eq!(
            f["Properties"]["CodeUri"],
            format!("functions/{binary}"),
            "{id}"
        );
        assert_eq!(
            function_property(&t, f, "Runtime"),
            "provided.al2023",
            "{id}"
        );
        assert_eq!(
            function_property(&t, f, "Architectures"),
            &json!(["arm64"]),
            "{id}"
        );
        assert_eq!(function_property(&t, f, "Handler"), "bootstrap", "{id}");
        assert_eq!(
            function_property(&t, f, "LoggingConfig")["LogFormat"],
            "JSON",
            "{id}"
        );

        let url = &f["Properties"]["FunctionUrlConfig"];
        assert_eq!(url["AuthType"], "NONE", "{id}: the JWT is checked inside");
        let mode = if streaming {
            "RESPONSE_STREAM"
        } else {
            "BUFFERED"
        };
        assert_eq!(url["InvokeMode"], mode, "{id}");
        let headers: BTreeSet<String> = as_list(&url["Cors"]["AllowHeaders"])
            .iter()
            .map(|h| h.as_str().expect("header").to_ascii_lowercase())
            .collect();
        for h in ["authorization", "content-type", "idempotency-key"] {
            assert!(headers.contains(h), "{id}: CORS allows {h}");
        }
        assert_eq!(
            url["Cors"]["AllowOrigins"],
            json!({"Ref": "AllowedOrigins"}),
            "{id}"
        );

        let events = f["Properties"]["Events"].as_object().expect("API events");
        let mut paths: Vec<&str> = events
            .values()
            .map(|e| e["Properties"]["Path"].as_str().expect("Path"))
            .collect();
        paths.sort_unstable();
        let routes: &[&str] = match binary {
            "send" => &[
                "/api/conversations/{id}/messages",
                "/api/conversations/{id}/stream",
            ],
            "regenerate" => &["/api/conversations/{id}/regenerate"],
            _ => &[
                "/api/conversations",
                "/api/conversations/{id}",
                "/api/conversations/{id}/stop",
            ],
        };
        assert_eq!(paths, routes, "{id}: the routes its handler serves");
        for (name, event) in events {
            assert_eq!(event["Type"], "Api", "{id}.{name}");
            let path = event["Properties"]["Path"].as_str().expect("Path");
            assert!(path.starts_with("/api/conversations"), "{id}.{name}");
            let transfer = &event["Properties"]["ResponseTransferMode"];
            if streaming {
                assert_eq!(transfer, "RESPONSE_STREAM", "{id}.{name}");
            } else {
                assert!(transfer.is_null(), "{id}.{name}: buffered");
            }
        }

        let timeout = function_property(&t, f, "Timeout")
            .as_u64()
            .expect("Timeout");
        if streaming {
            let env = environment(&t, f);
            let deadline: u64 = resolve(&t, &env["INFERENCE_DEADLINE_SECS"], &HashMap::new())
                .parse()
                .expect("INFERENCE_DEADLINE_SECS");
            assert!(
                deadline >= 120 && timeout > deadline,
                "{id}: the upstream allows 120 s, the function outlasts the deadline"
            );
        }
    }
}

#[test]
fn every_function_gets_a_valid_configuration() {
    let t = template();
    let (table_id, _) = the_table(&t);
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-public.pem"
    ))
    .expect("test public key");
    // What a deployer must supply: every parameter without a default.
    let given = HashMap::from([
        ("InferenceUrl", "https://inference.example/generate"),
        ("InternalApiKey", "test-key"),
        ("JwtPublicKey", pem.as_str()),
        (
            "AllowedOrigins",
            "https://chat.example, http://localhost:3000",
        ),
    ]);
    let params = t["Parameters"].as_object().expect("Parameters");
    for (name, p) in params {
        if p["Default"].is_null() {
            assert!(given.contains_key(name.as_str()), "{name} has no default");
        }
    }
    for secret in ["InternalApiKey", "JwtPublicKey"] {
        assert_eq!(params[secret]["NoEcho"], true, "{secret}");
        assert!(
            params[secret]["Default"].is_null(),
            "{secret} has no default"
        );
    }

    for (id, _, _) in FUNCTIONS {
        let env = environment(&t, function(&t, id));
        assert_eq!(env["TABLE_NAME"], json!({"Ref": table_id}), "{id}");
        for (var, param) in [
            ("INTERNAL_API_KEY", "InternalApiKey"),
            ("JWT_PUBLIC_KEY", "JwtPublicKey"),
        ] {
            assert_eq!(env[var], json!({"Ref": param}), "{id}: {var}");
        }
        let values: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.clone(), resolve(&t, v, &given)))
            .collect();
        for var in [
            "INFERENCE_URL",
            "JWT_ISSUER",
            "INFERENCE_DEFAULT_TEMPERATURE",
            "INFERENCE_DEFAULT_MAX_TOKENS",
            "INFERENCE_DEFAULT_TOP_K",
            "MAX_CONVERSATION_HISTORY",
            "MAX_TOKEN_BUDGET",
            "ALLOWED_ORIGINS",
            "INFERENCE_DEADLINE_SECS",
            "CHECKPOINT_INTERVAL_MS",
            "LIVE_STALE_AFTER_MS",
        ] {
            assert!(values.contains_key(var), "{id}: {var} is set explicitly");
        }
        let config = Config::from_lookup(|name| values.get(name).cloned())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            config.allowed_origins,
            ["https://chat.example", "http://localhost:3000"]
        );
        assert_eq!(config.inference_deadline.as_secs(), 270, "{id}");
        assert_eq!(config.checkpoint_interval.as_millis(), 1000, "{id}");
        assert_eq!(config.live_stale_after.as_millis(), 30_000, "{id}");
    }
}

/// A resource and the DynamoDB actions (without `dynamodb:`) allowed on it.
type Grant<'a> = (&'a Value, Vec<&'a str>);

#[test]
fn each_role_allows_only_the_dynamodb_actions_its_function_uses() {
    let t = template();
    let (table_id, _) = the_table(&t);
    let table = json!({"Fn::GetAtt": [table_id, "Arn"]});
    let index = json!({ "Fn::Sub": format!("${{{table_id}.Arn}}/index/{USER_INDEX}") });
    let transactions = ["PutItem", "UpdateItem", "ConditionCheckItem"];
    let idempotency = ["GetItem", "PutItem", "UpdateItem"];
    let expected: [(&str, Vec<Grant>); 3] = [
        (
            "SendFunction",
            vec![(
                &table,
                [&["Query"][..], &transactions, &idempotency].concat(),
            )],
        ),
        (
            "RegenerateFunction",
            vec![(
                &table,
                [&["Query", "DeleteItem"][..], &transactions, &idempotency].concat(),
            )],
        ),
        (
            "ConversationsFunction",
            vec![
                (
                    &table,
                    vec![
                        "PutItem",
                        "GetItem",
                        "Query",
                        "UpdateItem",
                        "DeleteItem",
                        "BatchWriteItem",
                    ],
                ),
                (&index, vec!["Query"]),
            ],
        ),
    ];
    for (id, grants) in expected {
        let f = function(&t, id);
        assert!(f["Properties"]["Role"].is_null(), "{id}: SAM's own role");
        let mut actual: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for policy in as_list(&f["Properties"]["Policies"]) {
            let statements = policy["Statement"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: inline policy statements only, got {policy}"));
            for s in statements {
                assert_eq!(s["Effect"], "Allow", "{id}");
                let actions: Vec<String> = as_list(&s["Action"])
                    .iter()
                    .map(|a| a.as_str().expect("action").to_owned())
                    .collect();
                for resource in as_list(&s["Resource"]) {
                    assert_ne!(resource, "*", "{id}: no Resource \"*\"");
                    for a in &actions {
                        assert!(!a.contains('*'), "{id}: no wildcard action {a}");
                        actual
                            .entry(resource.to_string())
                            .or_default()
                            .insert(a.clone());
                    }
                }
            }
        }
        let wanted: BTreeMap<String, BTreeSet<String>> = grants
            .into_iter()
            .map(|(resource, actions)| {
                (
                    resource.to_string(),
                    actions.iter().map(|a| format!("dynamodb:{a}")).collect(),
                )
            })
            .collect();
        assert_eq!(actual, wanted, "{id}");
    }
}

// ---------------------------------------------------------------------------
// Operations: alarms and the dashboard watch what the code writes

/// A metric an alarm or the dashboard reads: namespace, name, dimensions (name
/// to value).
struct Watched {
    namespace: String,
    name: String,
    dimensions: BTreeMap<String, Value>,
}

/// The metrics an alarm reads, as a single metric or as metric math.
fn watched_by(alarm: &Value) -> Vec<Watched> {
    let p = &alarm["Properties"];
    let single = p["MetricName"].is_string().then(|| (p, &p["Dimensions"]));
    let stats = as_list(&p["Metrics"]);
    let from_math = stats
        .iter()
        .filter(|m| m["MetricStat"].is_object())
        .map(|m| &m["MetricStat"]["Metric"]);
    single
        .into_iter()
        .chain(from_math.map(|m| (m, &m["Dimensions"])))
        .map(|(m, dims)| Watched {
            namespace: m["Namespace"].as_str().expect("Namespace").to_owned(),
            name: m["MetricName"].as_str().expect("MetricName").to_owned(),
            dimensions: as_list(dims)
                .iter()
                .map(|d| {
                    (
                        d["Name"].as_str().expect("dimension Name").to_owned(),
                        d["Value"].clone(),
                    )
                })
                .collect(),
        })
        .collect()
}

const LAMBDA_METRICS: &[&str] = &[
    "Errors",
    "Throttles",
    "Invocations",
    "ConcurrentExecutions",
    "Duration",
];

/// Holds a watched metric to what the code writes: a metric of
/// `samosachaat::adapters::metrics` with one of the dimension sets its group is written
/// with, a function of this template, an outcome the code has; or a Lambda
/// metric of one of the functions.
fn assert_written_by_the_code(w: &Watched, context: &str) {
    use samosachaat::adapters::metrics as m;
    let function_ids: Vec<&str> = FUNCTIONS.iter().map(|(id, ..)| *id).collect();
    let function_ref = |v: &Value| {
        v["Ref"]
            .as_str()
            .is_some_and(|id| function_ids.contains(&id))
    };
    match w.namespace.as_str() {
        m::NAMESPACE => {
            let sets = if m::REQUEST_METRICS.contains(&w.name.as_str()) {
                m::REQUEST_DIMENSIONS
            } else if m::ANSWER_METRICS.contains(&w.name.as_str()) {
                m::ANSWER_DIMENSIONS
            } else {
                panic!("{context}: {} is not a metric the code writes", w.name)
            };
            assert!(
                m::METRICS.iter().any(|(name, _)| *name == w.name),
                "{context}: {} has no unit",
                w.name
            );
            let names: BTreeSet<&str> = w.dimensions.keys().map(String::as_str).collect();
            assert!(
                sets.iter()
                    .any(|set| set.iter().copied().collect::<BTreeSet<_>>() == names),
                "{context}: {} is not written with dimensions {names:?}",
                w.name
            );
            assert!(
                function_ref(&w.dimensions[m::FUNCTION]),
                "{context}: function must be a Ref to a function of this template"
            );
            if let Some(outcome) = w.dimensions.get(m::OUTCOME) {
                let outcome = outcome.as_str().expect("outcome");
                assert!(m::OUTCOMES.contains(&outcome), "{context}: {outcome}");
            }
        }
        "AWS/Lambda" => {
            assert!(LAMBDA_METRICS.contains(&w.name.as_str()), "{context}");
            assert!(
                function_ref(&w.dimensions["FunctionName"]),
                "{context}: FunctionName must be a Ref to a function of this template"
            );
        }
        other => panic!("{context}: unexpected namespace {other}"),
    }
}

#[test]
fn alarms_watch_metrics_the_code_writes() {
    let t = template();
    let alarms = resources_of_type(&t, "AWS::CloudWatch::Alarm");
    assert!(!alarms.is_empty());
    for (id, alarm) in &alarms {
        let watched = watched_by(alarm);
        assert!(!watched.is_empty(), "{id} watches nothing");
        for w in &watched {
            assert_written_by_the_code(w, id);
        }
    }
}

#[test]
fn the_alarms_an_operator_needs_are_there_with_thresholds_as_parameters() {
    use samosachaat::adapters::metrics as m;
    let t = template();
    let alarms = resources_of_type(&t, "AWS::CloudWatch::Alarm");
    let watching = |namespace: &str, name: &str, function: &str, outcome: Option<&str>| {
        alarms
            .iter()
            .filter(|(_, alarm)| {
                watched_by(alarm).iter().any(|w| {
                    let function_dim = if namespace == "AWS/Lambda" {
                        "FunctionName"
                    } else {
                        m::FUNCTION
                    };
                    w.namespace == namespace
                        && w.name == name
                        && w.dimensions.get(function_dim) == Some(&json!({ "Ref": function }))
                        && w.dimensions.get(m::OUTCOME).and_then(Value::as_str) == outcome
                })
            })
            .map(|(id, alarm)| (*id, *alarm))
            .collect::<Vec<_>>()
    };
    for (function, ..) in FUNCTIONS {
        for name in ["Errors", "Throttles"] {
            assert!(
                !watching("AWS/Lambda", name, function, None).is_empty(),
                "no alarm on {function}'s {name}"
            );
        }
    }
    for function in ["SendFunction", "RegenerateFunction"] {
        let persist = watching(m::NAMESPACE, m::ANSWERS, function, Some("persist_failed"));
        assert_eq!(persist.len(), 1, "persist_failed of {function}");
        // Any persist_failed: at least one answer in a period.
        let p = &persist[0].1["Properties"];
        assert_eq!(p["Threshold"], 1);
        assert_eq!(p["ComparisonOperator"], "GreaterThanOrEqualToThreshold");
        for outcome in ["inference_unavailable", "inference_error"] {
            let rate = watching(m::NAMESPACE, m::ANSWERS, function, Some(outcome));
            assert_eq!(rate.len(), 1, "{outcome} of {function}");
            // A rate: the same alarm divides by all of the function's answers.
            assert!(watched_by(rate[0].1).iter().any(|w| w.name == m::ANSWERS
                && w.dimensions.len() == 1
                && w.dimensions[m::FUNCTION] == json!({ "Ref": function })));
        }
        let ttft = watching(m::NAMESPACE, m::TIME_TO_FIRST_TOKEN, function, None);
        assert_eq!(ttft.len(), 1, "TTFT alarm of {function}");
        assert_eq!(ttft[0].1["Properties"]["ExtendedStatistic"], "p95");
    }

    let parameters = t["Parameters"].as_object().expect("Parameters");
    for (id, alarm) in &alarms {
        let p = &alarm["Properties"];
        match &p["Threshold"] {
            Value::Object(r) => {
                let name = r["Ref"].as_str().expect("Threshold: a Ref");
                assert_eq!(parameters[name]["Type"], "Number", "{id}: {name}");
            }
            fixed => assert_eq!(fixed, &json!(1), "{id}: only 'any' is fixed"),
        }
        assert_eq!(p["TreatMissingData"], "notBreaching", "{id}");
        // Both notification targets optional: a topic made for an email, an
        // existing topic, each only when given.
        let actions = json!([
            {"Fn::If": ["HasAlarmEmail", {"Ref": "AlarmTopic"}, {"Ref": "AWS::NoValue"}]},
            {"Fn::If": ["HasAlarmTopicArn", {"Ref": "AlarmTopicArn"}, {"Ref": "AWS::NoValue"}]},
        ]);
        assert_eq!(p["AlarmActions"], actions, "{id}");
        assert_eq!(p["OKActions"], actions, "{id}");
    }
    // Lambda files the metrics records (JSON without a level) at INFO: a
    // higher application log level would drop them.
    assert_eq!(
        parameters["LogLevel"]["AllowedValues"],
        json!(["TRACE", "DEBUG", "INFO"])
    );
    for (id, ..) in FUNCTIONS {
        let logging = &function(&t, id)["Properties"]["LoggingConfig"];
        assert_eq!(logging["LogFormat"], "JSON", "{id}");
        assert_eq!(
            logging["ApplicationLogLevel"],
            json!({"Ref": "LogLevel"}),
            "{id}"
        );
    }
    let topic = &t["Resources"]["AlarmTopic"];
    assert_eq!(topic["Type"], "AWS::SNS::Topic");
    assert_eq!(topic["Condition"], "HasAlarmEmail");
    for (condition, parameter) in [
        ("HasAlarmEmail", "AlarmEmail"),
        ("HasAlarmTopicArn", "AlarmTopicArn"),
    ] {
        assert_eq!(
            t["Conditions"][condition],
            json!({"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]})
        );
        assert_eq!(parameters[parameter]["Default"], "", "{parameter} optional");
    }
}

#[test]
fn the_dashboard_charts_metrics_the_code_writes_and_every_alarm() {
    use samosachaat::adapters::metrics as m;
    let t = template();
    let dashboards = resources_of_type(&t, "AWS::CloudWatch::Dashboard");
    assert_eq!(dashboards.len(), 1, "one dashboard");
    let source = dashboards[0].1["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("DashboardBody: !Sub of the JSON");

    // Every ${...} names a function, an alarm's Arn or the region; replaced by a
    // marker the checks below recognise.
    let mut body = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("${") {
        body.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closing }") + at;
        let name = &rest[at + 2..end];
        let (resource, attribute) = name.split_once('.').unwrap_or((name, ""));
        if name != "AWS::Region" {
            let kind = &t["Resources"][resource]["Type"];
            assert!(
                (attribute.is_empty() && kind == "AWS::Serverless::Function")
                    || (attribute == "Arn" && kind == "AWS::CloudWatch::Alarm"),
                "${{{name}}}"
            );
        }
        body.push_str(&format!("@{name}@"));
        rest = &rest[end + 1..];
    }
    body.push_str(rest);
    let dashboard: Value = serde_json::from_str(&body).expect("the dashboard body is JSON");

    let mut charted = BTreeSet::new();
    let mut alarms_shown = BTreeSet::new();
    for widget in dashboard["widgets"].as_array().expect("widgets") {
        let props = &widget["properties"];
        for alarm in as_list(&props["alarms"]) {
            alarms_shown.insert(alarm.as_str().expect("alarm").to_owned());
        }
        for row in as_list(&props["metrics"]) {
            let row = row.as_array().expect("a metric row is a list");
            let Some(namespace) = row[0].as_str() else {
                // An expression; a SEARCH names its namespace and metric.
                let expression = row[0]["expression"].as_str().expect("expression");
                if let Some(search) = expression.strip_prefix("SEARCH('{") {
                    let namespace = search.split(',').next().expect("namespace");
                    assert_eq!(namespace, m::NAMESPACE, "{expression}");
                    let name = search
                        .split("MetricName=\\\"")
                        .nth(1)
                        .or_else(|| search.split("MetricName=\"").nth(1))
                        .and_then(|s| s.split(['\\', '"']).next())
                        .expect("MetricName in SEARCH");
                    assert!(m::METRICS.iter().any(|(n, _)| *n == name), "{expression}");
                    charted.insert(name.to_owned());
                }
                continue;
            };
            let name = row[1].as_str().expect("metric name");
            let dimensions = row[2..]
                .chunks(2)
                .filter(|pair| pair.len() == 2 && pair[0].is_string())
                .map(|pair| {
                    let value = pair[1].as_str().expect("dimension value");
                    let value = value
                        .strip_prefix('@')
                        .and_then(|v| v.strip_suffix('@'))
                        .map_or_else(|| json!(value), |id| json!({ "Ref": id }));
                    (pair[0].as_str().expect("dimension").to_owned(), value)
                })
                .collect();
            assert_written_by_the_code(
                &Watched {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    dimensions,
                },
                "dashboard",
            );
            if namespace == m::NAMESPACE {
                charted.insert(name.to_owned());
            }
        }
    }
    for (name, _) in m::METRICS {
        assert!(charted.contains(*name), "{name} is not on the dashboard");
    }
    for (id, _) in resources_of_type(&t, "AWS::CloudWatch::Alarm") {
        assert!(
            alarms_shown.contains(&format!("@{id}.Arn@")),
            "{id} is not on the dashboard"
        );
    }
}
