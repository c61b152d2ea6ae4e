//! DynamoDB read and write capacity units of one request, estimated from the item
//! sizes on the wire (request and response JSON), by DynamoDB's published rules:
//!
//! - writes: 1 WCU per 1 KB of item (rounded up, at least 1); in a transaction ×2;
//! - reads: 1 RCU per 4 KB (rounded up, at least 1) strongly consistent, half
//!   that eventually consistent; a Query or Scan sums the sizes of all the items
//!   it returns before rounding; in a transaction ×2;
//! - on-demand tables bill the same amounts as read and write request units.
//!
//! What the wire does not show is estimated low: an `UpdateItem` is billed by the
//! larger of the item before and after, but only its key and new values are seen
//! here unless it returns the item (`ReturnValues`); a Query with a filter is
//! billed for the items read before filtering; a `ConditionCheck` counts as a
//! write of its key. Rounding up to 1 KB hides most of this for small items.

use serde_json::Value;

/// Capacity (request) units of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Units {
    pub read: f64,
    pub write: f64,
}

impl std::ops::AddAssign for Units {
    fn add_assign(&mut self, o: Units) {
        self.read += o.read;
        self.write += o.write;
    }
}

/// The units one request consumed. `op` is the `X-Amz-Target` operation
/// (`Query`, `TransactWriteItems`, ...).
pub fn estimate(op: &str, request: &Value, response: &Value) -> Units {
    let consistent = |v: &Value| v["ConsistentRead"].as_bool().unwrap_or(false);
    let write = |bytes: u64| Units {
        read: 0.0,
        write: write_units(bytes),
    };
    let read = |bytes: u64, consistent: bool| Units {
        read: read_units(bytes, consistent),
        write: 0.0,
    };
    match op {
        "GetItem" => read(item_size(&response["Item"]), consistent(request)),
        "Query" | "Scan" => {
            let bytes = list(&response["Items"]).iter().map(item_size).sum();
            read(bytes, consistent(request))
        }
        "PutItem" => write(item_size(&request["Item"]).max(item_size(&response["Attributes"]))),
        "UpdateItem" => write(update_size(request).max(item_size(&response["Attributes"]))),
        "DeleteItem" => write(item_size(&request["Key"]).max(item_size(&response["Attributes"]))),
        "TransactWriteItems" => {
            let mut u = Units::default();
            for t in list(&request["TransactItems"]) {
                let bytes = if let Some(put) = t.get("Put") {
                    item_size(&put["Item"])
                } else if let Some(update) = t.get("Update") {
                    update_size(update)
                } else {
                    t.as_object()
                        .and_then(|o| o.values().next())
                        .map_or(0, |op| item_size(&op["Key"]))
                };
                u.write += 2.0 * write_units(bytes);
            }
            u
        }
        "TransactGetItems" => {
            let mut u = Units::default();
            for r in list(&response["Responses"]) {
                u.read += 2.0 * read_units(item_size(&r["Item"]), true);
            }
            u
        }
        "BatchWriteItem" => {
            let mut u = Units::default();
            for requests in object_values(&request["RequestItems"]) {
                for r in list(requests) {
                    let bytes = item_size(&r["PutRequest"]["Item"])
                        .max(item_size(&r["DeleteRequest"]["Key"]));
                    u.write += write_units(bytes);
                }
            }
            u
        }
        "BatchGetItem" => {
            let mut u = Units::default();
            if let Some(tables) = response["Responses"].as_object() {
                for (table, items) in tables {
                    let c = consistent(&request["RequestItems"][table]);
                    for item in list(items) {
                        u.read += read_units(item_size(item), c);
                    }
                }
            }
            u
        }
        _ => Units::default(),
    }
}

fn write_units(bytes: u64) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

fn read_units(bytes: u64, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn object_values(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_object().into_iter().flat_map(|o| o.values())
}

/// What an update writes, as far as the request shows: its key and new values.
fn update_size(update: &Value) -> u64 {
    item_size(&update["Key"])
        + object_values(&update["ExpressionAttributeValues"])
            .map(value_size)
            .sum::<u64>()
}

/// The size of an item in DynamoDB JSON (`{"name": {"S": "..."}, ...}`): the
/// UTF-8 length of each attribute name plus the size of its value.
pub fn item_size(item: &Value) -> u64 {
    item.as_object().map_or(0, |o| {
        o.iter()
            .map(|(name, v)| name.len() as u64 + value_size(v))
            .sum()
    })
}

fn value_size(v: &Value) -> u64 {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let s = || inner.as_str().unwrap_or("");
    match kind.as_str() {
        "S" => s().len() as u64,
        "N" => number_size(s()),
        "B" => base64_len(s()),
        "BOOL" | "NULL" => 1,
        "SS" => list(inner)
            .iter()
            .map(|x| x.as_str().map_or(0, str::len) as u64)
            .sum(),
        "NS" => list(inner)
            .iter()
            .map(|x| number_size(x.as_str().unwrap_or("")))
            .sum(),
        "BS" => list(inner)
            .iter()
            .map(|x| base64_len(x.as_str().unwrap_or("")))
            .sum(),
        "L" => 3 + list(inner).iter().map(|x| 1 + value_size(x)).sum::<u64>(),
        "M" => 3 + item_size(inner) + inner.as_object().map_or(0, |o| o.len() as u64),
        _ => 0,
    }
}

/// About one byte per two significant digits, plus one.
fn number_size(n: &str) -> u64 {
    let digits = n
        .trim_start_matches(['-', '+'])
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>();
    let significant = digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len()
        .max(1);
    (significant as u64).div_ceil(2) + 1
}

fn base64_len(s: &str) -> u64 {
    let pad = s.bytes().rev().take_while(|&b| b == b'=').count() as u64;
    (s.len() as u64 / 4 * 3).saturating_sub(pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_sizes_follow_dynamodb_rules() {
        let item = json!({
            "pk": {"S": "CONV#abc"},          // 2 + 8
            "n": {"N": "12345"},              // 1 + 4
            "ok": {"BOOL": true},             // 2 + 1
            "l": {"L": [{"S": "ab"}]},        // 1 + 3 + 1 + 2
        });
        assert_eq!(item_size(&item), 10 + 5 + 3 + 7);
    }

    #[test]
    fn units_round_up_per_request() {
        let small = json!({"Item": {"pk": {"S": "x"}}});
        assert_eq!(estimate("PutItem", &small, &json!({})).write, 1.0);
        let big = json!({"Item": {"c": {"S": "x".repeat(1500)}}});
        assert_eq!(estimate("PutItem", &big, &json!({})).write, 2.0);

        // A Query sums its items before rounding; eventually consistent halves.
        let items =
            json!({"Items": [{"a": {"S": "x".repeat(3000)}}, {"a": {"S": "x".repeat(3000)}}]});
        assert_eq!(estimate("Query", &json!({}), &items).read, 1.0);
        let consistent = json!({"ConsistentRead": true});
        assert_eq!(estimate("Query", &consistent, &items).read, 2.0);
        assert_eq!(
            estimate("Query", &json!({}), &json!({"Items": []})).read,
            0.5
        );

        // A transaction doubles each item's units.
        let tx = json!({"TransactItems": [
            {"Put": {"Item": {"pk": {"S": "x"}}}},
            {"Update": {"Key": {"pk": {"S": "y"}}, "ExpressionAttributeValues": {":t": {"S": "z"}}}},
            {"ConditionCheck": {"Key": {"pk": {"S": "y"}}}},
        ]});
        assert_eq!(estimate("TransactWriteItems", &tx, &json!({})).write, 6.0);
        assert_eq!(
            estimate("DescribeTable", &json!({}), &json!({})),
            Units::default()
        );
    }
}
