//! The table's key schema, in one place: the store reads and writes by it, the
//! local stack creates the table from it, and a test holds `template.yaml` to it.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use super::{classify, StoreError, USER_INDEX};

/// (attribute, key type) of the table.
pub const TABLE_KEYS: [(&str, &str); 2] = [("pk", "HASH"), ("sk", "RANGE")];
/// (attribute, key type) of the user index.
pub const USER_INDEX_KEYS: [(&str, &str); 2] = [("user_id", "HASH"), ("updated_at", "RANGE")];
/// Idempotency records expire through DynamoDB's TTL on this attribute.
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// Every key attribute is a string.
pub const KEY_ATTRIBUTES: [&str; 4] = ["pk", "sk", "user_id", "updated_at"];

fn key(name: &str, kind: &str) -> Result<KeySchemaElement, StoreError> {
    let kind = if kind == "HASH" {
        KeyType::Hash
    } else {
        KeyType::Range
    };
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| StoreError::Other(e.to_string()))
}

/// Creates the table (on-demand) with its user index; an existing table is fine.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for name in KEY_ATTRIBUTES {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::Other(e.to_string()))?,
        );
    }
    for (name, kind) in TABLE_KEYS {
        req = req.key_schema(key(name, kind)?);
    }
    let mut index = GlobalSecondaryIndex::builder()
        .index_name(USER_INDEX)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        );
    for (name, kind) in USER_INDEX_KEYS {
        index = index.key_schema(key(name, kind)?);
    }
    req = req.global_secondary_indexes(
        index
            .build()
            .map_err(|e| StoreError::Other(e.to_string()))?,
    );
    match req.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            return Ok(())
        }
        Err(e) => return Err(classify(e)),
    }
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name(TTL_ATTRIBUTE)
        .enabled(true)
        .build()
        .map_err(|e| StoreError::Other(e.to_string()))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(classify)?;
    Ok(())
}
