//! Access-token verification (SPEC section 7): RS256 tokens of the samosaChaat auth
//! service, checked locally with its public key.

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::foundation::error::ApiError;

/// Real access tokens are well under 2 KiB; anything this large is not one, and
/// refusing it early keeps a hostile header from costing a signature check.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The authenticated caller. Only the id is used for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[allow(dead_code)]
    iat: i64,
    #[serde(rename = "type")]
    token_type: String,
}

/// Verifies tokens; built once per cold start.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(public_key_pem: &str, issuer: &str) -> Result<Self, jsonwebtoken::errors::Error> {
        let key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes())?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // An expired token is expired: the auth service issues refresh tokens for
        // clock-edge cases, so no grace period here.
        validation.leeway = 0;
        Ok(Self { key, validation })
    }

    /// Authenticates a request from its `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<User, ApiError> {
        let token = bearer_token(headers)?;
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<User, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::Unauthorized);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| ApiError::Unauthorized)?;
        let claims = data.claims;
        if claims.token_type != "access" {
            return Err(ApiError::Unauthorized);
        }
        let id = Uuid::parse_str(&claims.sub).map_err(|_| ApiError::Unauthorized)?;
        Ok(User { id })
    }
}

/// Exactly one `Authorization: Bearer <token>` header carrying exactly one token.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(ApiError::Unauthorized)?;
    if values.next().is_some() {
        return Err(ApiError::Unauthorized);
    }
    let value = value.to_str().map_err(|_| ApiError::Unauthorized)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains([' ', ',', '\t'])
    {
        return Err(ApiError::Unauthorized);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::config::tests::TEST_PUBLIC_KEY;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::{json, Value};

    const PRIVATE: &str = include_str!("../../tests/fixtures/jwt-private.pem");
    const OTHER_PRIVATE: &str = include_str!("../../tests/fixtures/other-private.pem");
    const SUB: &str = "7f3c9a52-1f7e-4c1e-9a51-1d2b3c4d5e6f";

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn claims() -> Value {
        json!({
            "sub": SUB, "email": "a@example.com", "name": "A",
            "iat": now(), "exp": now() + 600, "iss": "samosachaat-auth", "type": "access",
        })
    }

    fn sign(claims: &Value, pem: &str) -> String {
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("test key");
        encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign")
    }

    fn with(mut c: Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        f(c.as_object_mut().expect("object"));
        c
    }

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn verifier() -> Verifier {
        Verifier::new(TEST_PUBLIC_KEY, "samosachaat-auth").expect("verifier")
    }

    #[test]
    fn token_table() {
        let valid = sign(&claims(), PRIVATE);
        let hs256_with_public_key = {
            let key = EncodingKey::from_secret(TEST_PUBLIC_KEY.as_bytes());
            encode(&Header::new(Algorithm::HS256), &claims(), &key).expect("sign")
        };
        let alg_none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims().to_string().as_bytes())
        );
        let tampered = {
            let parts: Vec<&str> = valid.split('.').collect();
            let other = with(claims(), |m| {
                m.insert("sub".into(), json!("00000000-0000-0000-0000-000000000001"));
            });
            format!(
                "{}.{}.{}",
                parts[0],
                b64(other.to_string().as_bytes()),
                parts[2]
            )
        };
        let huge = {
            let padded = with(claims(), |m| {
                m.insert("pad".into(), json!("x".repeat(100 * 1024)));
            });
            sign(&padded, PRIVATE)
        };

        let cases: Vec<(&str, String, bool)> = vec![
            ("valid", valid.clone(), true),
            (
                "expired one second ago",
                sign(
                    &with(claims(), |m| {
                        m.insert("exp".into(), json!(now() - 1));
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "nbf in the future",
                sign(
                    &with(claims(), |m| {
                        m.insert("nbf".into(), json!(now() + 60));
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "exp missing",
                sign(
                    &with(claims(), |m| {
                        m.remove("exp");
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "wrong issuer",
                sign(
                    &with(claims(), |m| {
                        m.insert("iss".into(), json!("evil"));
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "refresh token",
                sign(
                    &with(claims(), |m| {
                        m.insert("type".into(), json!("refresh"));
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "type missing",
                sign(
                    &with(claims(), |m| {
                        m.remove("type");
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "sub missing",
                sign(
                    &with(claims(), |m| {
                        m.remove("sub");
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "sub not a uuid",
                sign(
                    &with(claims(), |m| {
                        m.insert("sub".into(), json!("alice"));
                    }),
                    PRIVATE,
                ),
                false,
            ),
            (
                "signed by another key",
                sign(&claims(), OTHER_PRIVATE),
                false,
            ),
            ("alg none", alg_none, false),
            (
                "hs256 with the public key as secret",
                hs256_with_public_key,
                false,
            ),
            ("tampered payload", tampered, false),
            ("100 KB token", huge, false),
            ("garbage", "a.b.c".into(), false),
        ];
        let v = verifier();
        for (name, token, ok) in cases {
            let got = v.verify(&token);
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
            if ok {
                assert_eq!(got.expect("ok").id.to_string(), SUB);
            }
        }
    }

    #[test]
    fn header_table() {
        let token = sign(&claims(), PRIVATE);
        let cases: Vec<(Vec<String>, bool)> = vec![
            (vec![format!("Bearer {token}")], true),
            (vec![format!("bearer {token}")], true),
            (vec![], false),
            (vec![token.clone()], false),
            (vec![format!("Basic {token}")], false),
            (vec!["Bearer ".into()], false),
            (vec![format!("Bearer {token} {token}")], false),
            (vec![format!("Bearer {token}, Bearer {token}")], false),
            (
                vec![format!("Bearer {token}"), format!("Bearer {token}")],
                false,
            ),
        ];
        let v = verifier();
        for (values, ok) in cases {
            let mut headers = HeaderMap::new();
            for value in &values {
                headers.append(http::header::AUTHORIZATION, value.parse().expect("header"));
            }
            assert_eq!(v.authenticate(&headers).is_ok(), ok, "{values:?}");
        }
    }
}
