//! The on-disk record decoder's fuzz harness ([`records`]): corrupt bytes
//! are an error, never a panic; re-encoding is a fixed point; record →
//! domain → record; sealing; the backup file format.

use crate::domain::{ChatMessage, Content, ContentDigest, PromptName, TemplateBody, Version};
use crate::store::backup;
use crate::store::records::{
    self, AuditRec, KeyRec, LabelRec, MoveRec, PromptRec, RevisionRec, VersionRec,
};
use crate::store::DataKey;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest as _, Sha256};

/// The key every record is decoded under; errors must name it.
const RECORD_KEY: &[u8] = b"v/fuzz/prompt\0\0\0\0\0\0\0\0\x01";

/// The data key of [`records`]' sealing checks.
fn fuzz_data_key() -> DataKey {
    DataKey::from_bytes(&[7; 32]).expect("32 bytes make a data key")
}

/// Decodes a record: an error names the key; a value re-encodes to bytes
/// that decode to the same value (the encoding is a fixed point).
fn decode_record<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let record = match records::decode::<T>(RECORD_KEY, bytes) {
        Ok(record) => record,
        Err(error) => {
            assert_eq!(
                error.key,
                String::from_utf8_lossy(RECORD_KEY).replace('\0', "/")
            );
            return None;
        }
    };
    let encoded = records::encode(&record);
    let again: T = records::decode(RECORD_KEY, &encoded)
        .unwrap_or_else(|e| panic!("a re-encoded record does not decode: {e}"));
    assert_eq!(records::encode(&again), encoded, "re-encoding changed it");
    Some(record)
}

/// Records target. The first byte picks the record type (or sealing, or a
/// backup file); the rest are the stored bytes (format byte and JSON).
pub fn records(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => {
            if let Some(version) =
                decode_record::<VersionRec>(bytes).and_then(|r| r.into_domain().ok())
            {
                let written = records::encode(&VersionRec::from(&version));
                let read = decode_record::<VersionRec>(&written)
                    .map(|r| r.into_domain())
                    .expect("a record written from a version decodes");
                assert_eq!(read.as_ref(), Ok(&version));
            }
        }
        1 => {
            let _ = decode_record::<LabelRec>(bytes).map(|r| r.into_domain("production"));
        }
        2 => {
            let _ = decode_record::<PromptRec>(bytes).map(|r| r.into_domain("fuzz/prompt"));
        }
        3 => {
            if let Some(moved) = decode_record::<MoveRec>(bytes).and_then(|r| r.into_domain().ok())
            {
                let written = records::encode(&MoveRec::from(&moved));
                let read = decode_record::<MoveRec>(&written).map(|r| r.into_domain());
                assert_eq!(read, Some(Ok(moved)));
            }
        }
        4 => {
            if let Some(revision) =
                decode_record::<RevisionRec>(bytes).and_then(|r| r.into_domain().ok())
            {
                let written = records::encode(&RevisionRec::from(&revision));
                let read = decode_record::<RevisionRec>(&written).map(|r| r.into_domain());
                assert_eq!(read, Some(Ok(revision)));
            }
        }
        5 => {
            if let Some(key) = decode_record::<KeyRec>(bytes) {
                let _ = hex::decode(&key.public_key);
            }
        }
        6 => {
            if let Some(audit) = decode_record::<AuditRec>(bytes) {
                let written = records::encode(&audit);
                let entry = crate::provenance::AuditEntry::from(audit);
                assert_eq!(records::encode(&AuditRec::from(&entry)), written);
            }
        }
        7 => check_sealing(bytes),
        _ => check_backup(bytes),
    }
}

/// A stored version's sealed content opens only with its data key under its
/// own record key, and opening gives back what was sealed; whatever is
/// stored, or decrypted, opening is an error or a value.
fn check_sealing(bytes: &[u8]) {
    let data_key = fuzz_data_key();
    if decode_record::<VersionRec>(bytes).is_none() {
        // Arbitrary plaintext behind a valid seal: what a data key opens is
        // still read as untrusted bytes.
        let mut rec = VersionRec {
            name: "fuzz/prompt".into(),
            version: 1,
            digest: ContentDigest([0; 32]).to_string(),
            template: None,
            variables: Vec::new(),
            model_config_json: None,
            sealed: Some(data_key.seal(RECORD_KEY, bytes)),
            author: String::new(),
            description: String::new(),
            tags: Default::default(),
            created_at: 0,
            revision: 1,
            signature: None,
            signing_key_id: None,
            pruned: false,
        };
        if rec.unseal(Some(&data_key), RECORD_KEY).is_ok() {
            assert!(rec.template.is_some() && rec.model_config_json.is_some());
        }
        return;
    }
    // The stored bytes with a sealed blob of their own: opened with no key
    // or with the fuzz key (whose id a seed carries).
    let decoded = || decode_record::<VersionRec>(bytes).expect("decoded once already");
    let _ = decoded().unseal(None, RECORD_KEY);
    let _ = decoded().unseal(Some(&data_key), RECORD_KEY);

    let mut plain = decoded();
    plain.sealed = None;
    let before = records::encode(&plain);
    let has_content = plain.template.is_some() && plain.model_config_json.is_some();
    plain.seal(&data_key, RECORD_KEY);
    assert_eq!(plain.sealed.is_some(), has_content);
    let sealed = records::encode(&plain);
    let read = || records::decode::<VersionRec>(RECORD_KEY, &sealed).expect("a sealed record");
    if has_content {
        assert!(
            read().unseal(Some(&data_key), b"v/another/record").is_err(),
            "sealed content opened under another record's key"
        );
        assert!(
            read().unseal(None, RECORD_KEY).is_err(),
            "sealed content opened without the data key"
        );
    }
    let mut opened = read();
    opened
        .unseal(Some(&data_key), RECORD_KEY)
        .expect("sealed content opens with its own key");
    assert_eq!(records::encode(&opened), before);
}

/// A backup file (the bytes, with their checksum appended so that the
/// framing is reached) reads back or is refused; what reads back writes
/// and reads again unchanged. Without the right checksum it is refused.
fn check_backup(bytes: &[u8]) {
    let _ = backup::decode(bytes);
    let mut file = bytes.to_vec();
    file.extend_from_slice(&Sha256::digest(bytes));
    let Ok((header, entries)) = backup::decode(&file) else {
        return;
    };
    let written = backup::encode(&header, &entries);
    assert_eq!(backup::decode(&written), Ok((header, entries)));
    if let Some(last) = file.last_mut() {
        *last ^= 1;
        assert!(backup::decode(&file).is_err(), "an altered backup was read");
    }
}

/// Seed inputs of [`records`]: each record type, sealed content and a
/// backup file, written with the real encoders.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    let digest = ContentDigest([0x5a; 32]);
    let name = PromptName::parse("name", "fuzz/prompt", 128).expect("a valid name");
    let label = crate::domain::LabelName::parse("label", "production").expect("a valid label");
    let version = Version {
        name: name.clone(),
        number: 3,
        digest,
        content: Content {
            template: TemplateBody::Chat(vec![ChatMessage {
                role: "system".into(),
                content: "Hi {{name}}".into(),
            }]),
            variables: vec!["name".into()],
            model_config_json: r#"{"t":0.5}"#.into(),
        },
        author: "ci".into(),
        description: "seed".into(),
        tags: [("team".to_string(), "a".to_string())].into(),
        created_at: 1_700_000_000_000_000,
        revision: 9,
        signature: Some(crate::domain::VersionSignature {
            key_id: "k1".into(),
            bytes: vec![1, 2, 3],
        }),
        pruned: false,
    };
    let moved = crate::domain::LabelMove {
        name: name.clone(),
        label: label.clone(),
        revision: 10,
        time: 1_700_000_000_000_001,
        kind: crate::domain::MoveKind::Rollback,
        from_version: Some(3),
        to_version: Some(2),
        digest: Some(digest),
        actor: "ops".into(),
        reason: "bad".into(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        clearance: crate::domain::Clearance {
            request: Some(4),
            approvers: vec!["erin".into()],
            emergency: false,
        },
        rollout: None,
    };
    let revision = crate::domain::Revision {
        revision: 10,
        time: 1_700_000_000_000_001,
        changes: vec![
            crate::domain::Change::VersionPublished {
                name,
                version: 3,
                digest,
                author: "ci".into(),
            },
            crate::domain::Change::LabelMoved(moved.clone()),
        ],
        trace_id: None,
    };
    let mut sealed = VersionRec::from(&version);
    sealed.seal(&fuzz_data_key(), RECORD_KEY);
    let header = backup::BackupHeader {
        format: backup::FORMAT.into(),
        version: backup::VERSION,
        schema: 1,
        revision: 10,
        entries: 1,
        encryption_key_id: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    let mut backup_file = backup::encode(
        &header,
        &[(b"meta/rev".to_vec(), 10u64.to_be_bytes().to_vec())],
    );
    backup_file.truncate(backup_file.len() - 32);
    let with_kind = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    vec![
        with_kind(0, records::encode(&VersionRec::from(&version))),
        with_kind(
            1,
            records::encode(&LabelRec {
                version: 3,
                digest: digest.to_string(),
                revision: 10,
                updated_at: 5,
            }),
        ),
        with_kind(
            2,
            records::encode(&PromptRec {
                latest_version: 3,
                latest_digest: digest.to_string(),
                updated_at: 5,
            }),
        ),
        with_kind(3, records::encode(&MoveRec::from(&moved))),
        with_kind(4, records::encode(&RevisionRec::from(&revision))),
        with_kind(
            5,
            records::encode(&KeyRec {
                public_key: "00ff".repeat(16),
                created_at: 1,
                revision: 1,
            }),
        ),
        with_kind(7, records::encode(&sealed)),
        with_kind(
            7,
            br#"{"template":{"kind":"text","text":"x"},"model_config_json":"{}"}"#.to_vec(),
        ),
        with_kind(8, backup_file),
    ]
}
