//! `TokenClaims::decode` of a projected service-account token (a JWT, not verified). Never
//! panics; the times decoded can be used (`lifetime`, `refresh_at`); the error never quotes the
//! token.
#![no_main]

use base64::Engine as _;
use keyrack_fuzz::{MARKER, assert_clean, scrub_str};
use keyrack_k8s::claims::TokenClaims;
use libfuzzer_sys::fuzz_target;

fn check(jwt: &str, planted: bool) {
    match TokenClaims::decode(jwt) {
        Ok(c) => {
            if let Some(lifetime) = c.lifetime() {
                let (iat, exp) = (c.issued_at.expect("iat"), c.expires_at.expect("exp"));
                assert_eq!(iat + lifetime, exp);
                let at = c.refresh_at(0.8).expect("a lifetime has a refresh time");
                assert!(iat <= at && at <= exp, "{c:?}");
            }
            let _ = format!("{c:?}");
        }
        Err(e) => {
            if planted {
                assert_clean(&e, "TokenClaims::decode");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // The input as a token, and as the claims of one (header and signature made up).
    let text = String::from_utf8_lossy(rest).into_owned();
    check(&text, false);
    let claims = b64.encode(rest);
    let header = b64.encode(br#"{"alg":"RS256","kid":"k"}"#);
    check(&format!("{header}.{claims}.c2ln"), false);

    // Planted: the marker as one of the three parts of the token (or all of it).
    let text = scrub_str(&text);
    let planted = match mode % 4 {
        0 => format!("{header}.{claims}.{MARKER}"),
        1 => format!("{MARKER}.{claims}.c2ln"),
        2 => format!("{header}.{MARKER}.c2ln"),
        _ => format!("{MARKER}{text}"),
    };
    check(&planted, true);
});
