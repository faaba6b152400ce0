//! The gateway's key pair lives in a Secret, so every replica (and a restarted one) uses the same
//! key and the foreign clusters need no change when the leader moves. Created on first start;
//! the private key is never logged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use liqonet_proto::Key;

use crate::keys;

/// The Secret's data key holding the private key (base64 text, as `wg genkey` prints it).
pub const PRIVATE_KEY: &str = "privateKey";
/// The public key, beside it, for `peering-info` and people.
pub const PUBLIC_KEY: &str = "publicKey";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Secret {0}: {1}")]
    Api(String, kube::Error),
    #[error("Secret {name}: data.{PRIVATE_KEY} {problem}")]
    Invalid { name: String, problem: String },
    #[error("cannot generate a key: {0}")]
    Random(std::io::Error),
}

/// The private key the Secret holds (`None` without a Secret).
pub async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Key>, KeyError> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| KeyError::Api(name.into(), e))?;
    secret.map(|s| private_key_of(&s, name)).transpose()
}

fn private_key_of(secret: &Secret, name: &str) -> Result<Key, KeyError> {
    let invalid = |problem: &str| KeyError::Invalid {
        name: name.into(),
        problem: problem.into(),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(PRIVATE_KEY))
        .ok_or_else(|| invalid("is missing"))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| invalid("is not text"))?;
    // The parse error is not shown: it could quote the key.
    text.trim()
        .parse::<Key>()
        .map_err(|_| invalid("does not hold a WireGuard private key (32 bytes in base64)"))
}

/// The key in Secret `name`, creating the Secret with a new key if there is none. Replicas that
/// race to create it end up with the one that was stored first.
pub async fn load_or_create(api: &Api<Secret>, name: &str) -> Result<Key, KeyError> {
    if let Some(key) = read(api, name).await? {
        tracing::info!(secret = name, public_key = %keys::public_of(&key).to_base64(), "using the key pair from the Secret");
        return Ok(key);
    }
    let key = keys::generate().map_err(KeyError::Random)?;
    let data = BTreeMap::from([
        (
            PRIVATE_KEY.to_string(),
            ByteString(key.to_base64().into_bytes()),
        ),
        (
            PUBLIC_KEY.to_string(),
            ByteString(keys::public_of(&key).to_base64().into_bytes()),
        ),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "liqonet".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = name, public_key = %keys::public_of(&key).to_base64(), "created a key pair and stored it in the Secret");
            Ok(key)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let key = read(api, name).await?.ok_or_else(|| KeyError::Invalid {
                name: name.into(),
                problem: "vanished after another replica created it".into(),
            })?;
            tracing::info!(
                secret = name,
                "another replica created the Secret first; using its key"
            );
            Ok(key)
        }
        Err(e) => Err(KeyError::Api(name.into(), e)),
    }
}
