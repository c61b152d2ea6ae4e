//! Holds `template.yaml` (the SAM bundle) to the code: the table's keys and index
//! are `samosachaat::schema`'s, every function gets the configuration
//! `Config::from_env` reads, the streaming functions stream, and each role allows
//! only the DynamoDB actions its function uses, on the table and its index.
//!
//! The template is read with a small CloudFormation-aware loader over
//! yaml-rust2's events: short tags become their long form (`!Ref X` is
//! `{"Ref": "X"}`, `!GetAtt A.B` is `{"Fn::GetAtt": ["A", "B"]}`, `!Sub s` is
//! `{"Fn::Sub": s}`), so the tests see the template as CloudFormation does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use samosachaat::config::Config;
use samosachaat::schema::{KEY_ATTRIBUTES, TABLE_KEYS, USER_INDEX_KEYS};
use samosachaat::store::USER_INDEX;
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
