//! Every API response the tests see is checked against the served OpenAPI document: the path,
//! method and status must be documented, and a JSON body must match its schema.

use crate::both;
use serde_json::Value;

/// Checks `body` (a JSON response) against the document's schema for this call; panics with a
/// precise message when it does not match.
pub fn check_response(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let path = path.split('?').next().unwrap_or(path);
    let (template, item) = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(t, _)| template_matches(t, path))
        .unwrap_or_else(|| panic!("{method} {path}: no such path in the OpenAPI document"));
    let op = &item[method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {template}: not documented");
    let response = &op["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {template}: status {status} is not documented ({body})"
    );
    let schema = &response["content"]["application/json"]["schema"];
    if schema.is_null() {
        return;
    }
    if let Err(e) = validate(doc, schema, body, "$") {
        panic!("{method} {template} {status}: the body does not match the schema: {e}\nbody: {body}");
    }
}

fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len() && t.iter().zip(&p).all(|(a, b)| a.starts_with('{') || a == b)
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = s[key].as_array() {
            return if options.iter().any(|o| validate(doc, o, v, at).is_ok()) {
                Ok(())
            } else {
                Err(format!("{at}: matches none of {key}"))
            };
        }
    }
    if let Some(all) = s["allOf"].as_array() {
        for o in all {
            validate(doc, o, v, at)?;
        }
    }
    match &s["type"] {
        Value::String(t) if !type_ok(t, v) => return Err(format!("{at}: expected {t}, got {v}")),
        Value::Array(ts) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)) => {
            return Err(format!("{at}: expected one of {ts:?}, got {v}"));
        }
        _ => {}
    }
    if let (Some(obj), Some(props)) = (v.as_object(), s["properties"].as_object()) {
        for req in s["required"].as_array().into_iter().flatten() {
            let name = req.as_str().unwrap();
            if !obj.contains_key(name) {
                return Err(format!("{at}: required property {name} missing"));
            }
        }
        for (k, val) in obj {
            match props.get(k) {
                Some(p) => validate(doc, p, val, &format!("{at}.{k}"))?,
                None if s["additionalProperties"] == Value::Bool(false) => {
                    return Err(format!("{at}: unexpected property {k}"));
                }
                None => {}
            }
        }
    }
    if let (Some(arr), false) = (v.as_array(), s["items"].is_null()) {
        for (i, item) in arr.iter().enumerate() {
            validate(doc, &s["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

both!(
    async fn the_openapi_document_is_served_and_describes_every_api_route(app) {
        let r = app.get("/v1/openapi.json").await;
        assert_eq!(r.status(), 200);
        let doc: Value = r.json().await.unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for p in [
            "/v1/admin/tenants", "/v1/admin/tenants/{id}", "/v1/admin/tenants/{id}/status", "/v1/admin/users", "/v1/admin/users/{id}",
            "/v1/admin/users/{id}/roles/{role}", "/v1/admin/invitations", "/v1/admin/users/{id}/invitation/resend",
            "/v1/admin/users/{id}/invitation", "/v1/admin/audit/events", "/v1/admin/audit/events/export",
            "/v1/admin/tenants/{id}/api-keys", "/v1/admin/tenants/{id}/api-keys/{key_id}",
            "/v1/admin/tenants/{id}/api-keys/{key_id}/roll", "/v1/admin/tenants/{id}/api-keys/{key_id}/revoke",
            "/v1/admin/tenants/{id}/usage", "/v1/admin/tenants/{id}/cost", "/v1/admin/tenants/{id}/budget",
            "/v1/data-plane/keys/verify", "/v1/data-plane/credentials/resolve",
        ] {
            assert!(doc["paths"][p].is_object(), "{p}");
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // The data plane takes service tokens, not personal access tokens, and says so.
        assert_eq!(doc["components"]["securitySchemes"]["service_token"]["scheme"], "bearer");
        for p in ["/v1/data-plane/keys/verify", "/v1/data-plane/credentials/resolve"] {
            let op = &doc["paths"][p]["post"];
            assert_eq!(op["security"], serde_json::json!([{"service_token": []}]), "{p}");
            for status in ["200", "401", "403", "408", "413", "422", "503"] {
                assert!(op["responses"][status].is_object(), "{p} {status}");
            }
        }
        let keys = &doc["paths"]["/v1/admin/tenants/{id}/api-keys"]["post"];
        assert_eq!(keys["security"], serde_json::json!([{"bearer": []}]));
    }
);
