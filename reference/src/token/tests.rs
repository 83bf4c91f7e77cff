//! Token signing and verification: every changed byte, every truncation, unknown
//! keys and other presenters are refused.

use super::*;
use crate::order_no::AwardType;

fn facts() -> TokenFacts {
    TokenFacts {
        app_id: 3,
        act_id: 10086,
        activity_id: 2027,
        child_id: 202703,
        order_no: OrderNo {
            act_id: 10086,
            scene_id: 301,
            rain_id: 7,
            award_type: AwardType::Cash,
            stage: 1,
        },
        award_id: 9001,
        amount_cents: 888,
        open_time_ms: 1_801_000_000_000,
    }
}

#[test]
fn a_signed_token_verifies_and_round_trips() {
    let ring = KeyRing::dev(1);
    let token = ring.sign(&facts()).expect("signing ring");
    assert!(token.len() < TOKEN_LEN_MAX / 2, "{} bytes", token.len());
    assert_eq!(ring.verify_for(&token, 10086, 2027), Ok(facts()));
    assert_eq!(
        ring.sign(&facts()),
        Some(token),
        "Ed25519 is deterministic: replays sign identically"
    );
}

#[test]
fn every_changed_byte_is_refused() {
    let ring = KeyRing::dev(1);
    let token = ring.sign(&facts()).expect("sign");
    for index in 0..token.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut changed = token.clone();
            changed[index] ^= flip;
            assert!(
                ring.verify_for(&changed, 10086, 2027).is_err(),
                "byte {index} ^ {flip:#x} was accepted"
            );
        }
    }
}

#[test]
fn truncated_and_extended_tokens_are_refused() {
    let ring = KeyRing::dev(1);
    let token = ring.sign(&facts()).expect("sign");
    for len in 0..token.len() {
        assert!(
            ring.verify(&token[..len]).is_err(),
            "truncated to {len} was accepted"
        );
    }
    let mut longer = token.clone();
    longer.extend_from_slice(&[0x20, 0x01]); // an extra field 4 = 1
    assert_eq!(ring.verify(&longer), Err(TokenError::Malformed));
    assert!(matches!(
        ring.verify(&vec![0; TOKEN_LEN_MAX + 1]),
        Err(TokenError::TooLong { .. })
    ));
}

#[test]
fn unknown_keys_other_users_and_other_activities_are_refused() {
    let signer = KeyRing::dev(1);
    let other = KeyRing::dev(2);
    let token = signer.sign(&facts()).expect("sign");
    assert_eq!(
        other.verify(&token),
        Err(TokenError::BadSignature),
        "same key id 0, different key"
    );
    let mut rotated = KeyRing::from_secret(7, [9; 32]);
    assert_eq!(rotated.verify(&token), Err(TokenError::UnknownKey(0)));
    rotated.trust(0, signer.verifying_keys()[&0]);
    assert!(
        rotated.verify(&token).is_ok(),
        "a rotated-out key still verifies once trusted"
    );
    assert_eq!(
        signer.verify_for(&token, 10087, 2027),
        Err(TokenError::WrongActId {
            token: 10086,
            presenter: 10087
        })
    );
    assert_eq!(
        signer.verify_for(&token, 10086, 2028),
        Err(TokenError::WrongActivity {
            token: 2027,
            presented: 2028
        })
    );
}

#[test]
fn a_resigned_body_with_inconsistent_fields_is_refused() {
    let ring = KeyRing::dev(1);
    let mut body = facts().body();
    body.act_id = 1; // the order number still says 10086
    let (key_id, key) = ring.signing.as_ref().expect("signing");
    let bytes = SignedToken {
        key_id: *key_id,
        body: body.encode_to_vec(),
        signature: key.sign(&body.encode_to_vec()).to_bytes().to_vec(),
    }
    .encode_to_vec();
    assert!(matches!(ring.verify(&bytes), Err(TokenError::BadBody(_))));
}

#[test]
fn keys_load_from_a_file_and_the_environment_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.toml");
    let secret = hex::encode([5u8; 32]);
    let public = hex::encode(KeyRing::from_secret(0, [6; 32]).verifying_keys()[&0].to_bytes());
    std::fs::write(&path, format!("active = 2\n[[key]]\nid = 2\nsecret_hex = \"{secret}\"\n[[key]]\nid = 1\npublic_hex = \"{public}\"\n")).expect("write");
    let ring = KeyRing::from_file(&path).expect("loads");
    let token = ring.sign(&facts()).expect("sign");
    assert_eq!(KeyRing::from_secret(2, [5; 32]).verify(&token), Ok(facts()));
    assert_eq!(ring.verifying_keys().len(), 2);
    std::fs::write(
        &path,
        "active = 3\n[[key]]\nid = 2\nsecret_hex = \"abcd\"\n",
    )
    .expect("write");
    let err = KeyRing::from_file(&path).expect_err("bad").to_string();
    assert!(
        err.contains("key[0]: secret_hex: 2 bytes, expected 32"),
        "{err}"
    );
    std::fs::write(
        &path,
        "active = 3\n[[key]]\nid = 2\nsecret_hex = \"{secret}\"\nsecret = 1\n",
    )
    .expect("write");
    assert!(
        KeyRing::from_file(&path)
            .expect_err("unknown key")
            .to_string()
            .contains("unknown field `secret`")
    );
    let spec =
        KeyRing::from_spec(&format!("4:{secret},1:{}", hex::encode([6u8; 32]))).expect("spec");
    assert_eq!(spec.signing.as_ref().map(|(id, _)| *id), Some(4));
    assert!(
        KeyRing::from_spec("x:00")
            .expect_err("bad id")
            .contains("key id `x`")
    );
    assert!(
        KeyRing::from_spec("1:zz")
            .expect_err("bad hex")
            .contains("not hex")
    );
    let debug = format!("{ring:?}");
    assert!(
        !debug.contains(&secret),
        "Debug must not print secrets: {debug}"
    );
}

fn facts_for(act_id: u64) -> TokenFacts {
    let mut facts = facts();
    facts.act_id = act_id;
    facts.order_no.act_id = act_id;
    facts
}

#[test]
fn a_batch_verifies_like_one_token_at_a_time() {
    let ring = KeyRing::dev(1);
    let tokens: Vec<Vec<u8>> = (1..=40)
        .map(|act_id| ring.sign(&facts_for(act_id)).expect("sign"))
        .collect();
    let expected: Vec<TokenFacts> = (1..=40).map(facts_for).collect();
    assert_eq!(
        ring.verify_batch(&tokens),
        Ok(expected),
        "facts in input order"
    );
    assert_eq!(ring.verify_batch(&[] as &[Vec<u8>]), Ok(Vec::new()));
    let token = &tokens[17];
    for index in 0..token.len() {
        for flip in [0x01u8, 0x80] {
            let mut changed = tokens.clone();
            changed[17][index] ^= flip;
            let one = ring.verify(&changed[17]);
            assert!(one.is_err(), "byte {index} ^ {flip:#x} was accepted");
            assert_eq!(
                ring.verify_batch(&changed),
                Err(one.expect_err("checked above")),
                "byte {index} ^ {flip:#x}: the batch names the same error"
            );
        }
    }
}

#[test]
fn a_batch_names_the_first_bad_token_in_input_order() {
    let ring = KeyRing::dev(1);
    let mut tokens: Vec<Vec<u8>> = (1..=5)
        .map(|act_id| ring.sign(&facts_for(act_id)).expect("sign"))
        .collect();
    tokens[1] = KeyRing::dev(2).sign(&facts()).expect("sign"); // another key, same id
    tokens[3].truncate(10);
    assert_eq!(ring.verify_batch(&tokens), Err(TokenError::BadSignature));
    tokens[0].push(0);
    assert_eq!(ring.verify_batch(&tokens), Err(TokenError::Malformed));
}

#[test]
fn a_batch_longer_than_one_equation_is_checked_in_chunks() {
    let ring = KeyRing::dev(1);
    let token = ring.sign(&facts()).expect("sign");
    let mut tokens = vec![token; VERIFY_BATCH_MAX + 3];
    assert_eq!(
        ring.verify_batch(&tokens).map(|f| f.len()),
        Ok(VERIFY_BATCH_MAX + 3)
    );
    let last = tokens.len() - 1;
    tokens[last][5] ^= 1;
    assert!(
        ring.verify_batch(&tokens).is_err(),
        "a bad token in the last chunk"
    );
}

#[test]
fn a_batch_refuses_a_weak_key_as_verify_strict_does() {
    // The identity point as key, R = identity and s = 0: the cofactorless
    // equation holds for any message, which only a strict check refuses.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = VerifyingKey::from_bytes(&identity).expect("a curve point");
    let mut ring = KeyRing::from_secret(1, [3; 32]);
    ring.trust(9, weak);
    let body = facts().body().encode_to_vec();
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&identity);
    assert!(
        ed25519_dalek::verify_batch(&[&body], &[Signature::from_bytes(&signature)], &[weak])
            .is_ok(),
        "the bare batch equation accepts it"
    );
    let token = SignedToken {
        key_id: 9,
        body,
        signature: signature.to_vec(),
    }
    .encode_to_vec();
    assert_eq!(ring.verify(&token), Err(TokenError::BadSignature));
    assert_eq!(ring.verify_batch(&[token]), Err(TokenError::BadSignature));
}

#[test]
fn a_batch_on_several_threads_gives_the_same_answer() {
    let ring = KeyRing::dev(1);
    let count = 4 * VERIFY_THREAD_TOKENS_MIN + 5;
    let tokens: Vec<Vec<u8>> = (1..=count as u64)
        .map(|act_id| ring.sign(&facts_for(act_id)).expect("sign"))
        .collect();
    let expected = ring.verify_batch(&tokens);
    assert_eq!(expected.as_ref().map(Vec::len), Ok(count));
    for threads in 1..=5 {
        assert_eq!(
            ring.verify_batch_on(&tokens, threads),
            expected,
            "{threads} threads"
        );
    }
    // Bad tokens in the second and last runs: the earlier one is named.
    let mut bad = tokens.clone();
    bad[count - 1][3] ^= 1;
    bad[VERIFY_THREAD_TOKENS_MIN + 7] = KeyRing::dev(2).sign(&facts()).expect("sign");
    for threads in 1..=5 {
        assert_eq!(
            ring.verify_batch_on(&bad, threads),
            Err(TokenError::BadSignature),
            "{threads} threads"
        );
    }
    bad[VERIFY_THREAD_TOKENS_MIN + 7].truncate(3);
    for threads in 1..=5 {
        assert_eq!(
            ring.verify_batch_on(&bad, threads),
            ring.verify(&bad[VERIFY_THREAD_TOKENS_MIN + 7])
                .map(|f| vec![f]),
            "{threads} threads"
        );
    }
}
