//! The one expression language of Tether: jq, evaluated by the `jaq` crates.
//!
//! Two forms, chosen by the field:
//! - an **expression** produces JSON (`body`, `id`, `observe`, `select`,
//!   `successWhen`, `outputs`, `when`, `forEach`, `input`);
//! - a **template** produces text (`path`, `query` values, `headers`): literal
//!   text with `\(expression)` interpolations, exactly a jq string literal.
//!   Path templates percent-encode every interpolated value (jq's `@uri`), so
//!   a value such as `../admin` or `evil.com/x` stays inside one segment.
//!
//! Errors name the spec field and quote the expression, so a condition
//! message tells the user what to fix. Pure: no I/O.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

type Data = data::JustLut<Val>;
type Filter = jaq_core::compile::Filter<jaq_core::Native<Data>>;

/// Why an expression could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("{field}: cannot compile `{expression}`: {message}")]
    Compile {
        field: String,
        expression: String,
        message: String,
    },
    #[error("{field}: `{expression}` failed: {message}")]
    Eval {
        field: String,
        expression: String,
        message: String,
    },
    #[error("{field}: `{expression}` must produce {expected}, got {got}")]
    Type {
        field: String,
        expression: String,
        expected: &'static str,
        got: String,
    },
}

/// A compiled expression with named variables (`$params`, `$steps`, ...).
pub struct Expr {
    field: String,
    source: String,
    vars: Vec<String>,
    filter: Filter,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expr")
            .field("field", &self.field)
            .field("source", &self.source)
            .finish()
    }
}

impl Expr {
    /// Compiles `source`, found at spec field `field`, with the given global
    /// variables (each starting with `$`).
    pub fn compile(field: &str, source: &str, vars: &[&str]) -> Result<Self, ExprError> {
        let compile_error = |message: String| ExprError::Compile {
            field: field.to_owned(),
            expression: source.to_owned(),
            message,
        };
        let program = File { code: source, path: () };
        let loader = Loader::new(jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs()));
        let arena = Arena::default();
        let modules = loader
            .load(&arena, program)
            .map_err(|errors| compile_error(describe_load_errors(&errors)))?;
        let filter = Compiler::default()
            .with_funs(jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs()))
            .with_global_vars(vars.iter().copied())
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .iter()
                    .flat_map(|(_, errs)| {
                        errs.iter()
                            .map(|(name, undefined)| format!("undefined {undefined:?} `{name}`"))
                    })
                    .collect();
                compile_error(names.join("; "))
            })?;
        Ok(Self {
            field: field.to_owned(),
            source: source.to_owned(),
            vars: vars.iter().map(|v| (*v).to_owned()).collect(),
            filter,
        })
    }

    /// Compiles a text template: `text` is the inside of a jq string literal
    /// (`/contacts/\(.id)`); with `encode_uri` interpolations are
    /// percent-encoded.
    pub fn template(field: &str, text: &str, vars: &[&str], encode_uri: bool) -> Result<Self, ExprError> {
        let escaped = text.replace('"', "\\\"");
        let program = if encode_uri {
            format!("@uri \"{escaped}\"")
        } else {
            format!("\"{escaped}\"")
        };
        let mut expr = Self::compile(field, &program, vars)?;
        expr.source = text.to_owned();
        Ok(expr)
    }

    /// The expression as the user wrote it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to the first output (`null` when there is none: a `select`
    /// that matches nothing).
    pub fn eval(&self, input: &Value, vars: &[&Value]) -> Result<Value, ExprError> {
        debug_assert_eq!(vars.len(), self.vars.len(), "variables of {}", self.field);
        let eval_error = |message: String| ExprError::Eval {
            field: self.field.clone(),
            expression: self.source.clone(),
            message,
        };
        let input = to_val(input).map_err(&eval_error)?;
        let vars = vars
            .iter()
            .map(|v| to_val(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&eval_error)?;
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new(vars));
        let mut outputs = self.filter.id.run((ctx, input)).map(unwrap_valr);
        match outputs.next() {
            None => Ok(Value::Null),
            Some(Ok(val)) => from_val(&val).map_err(eval_error),
            Some(Err(err)) => Err(eval_error(err.to_string())),
        }
    }

    /// Evaluates to a string (templates, ids).
    pub fn eval_string(&self, input: &Value, vars: &[&Value]) -> Result<String, ExprError> {
        match self.eval(input, vars)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.type_error("a string", &other)),
        }
    }

    /// Evaluates a condition: `false` and `null` are false, anything else true
    /// (jq truthiness).
    pub fn eval_bool(&self, input: &Value, vars: &[&Value]) -> Result<bool, ExprError> {
        Ok(!matches!(self.eval(input, vars)?, Value::Null | Value::Bool(false)))
    }

    /// The error of a value of the wrong type.
    pub fn type_error(&self, expected: &'static str, got: &Value) -> ExprError {
        let mut got = got.to_string();
        crate::target::text::truncate(&mut got, 80);
        ExprError::Type {
            field: self.field.clone(),
            expression: self.source.clone(),
            expected,
            got,
        }
    }
}

fn describe_load_errors<P>(errors: &jaq_core::load::Errors<&str, P>) -> String {
    use jaq_core::load::Error;
    let mut messages = Vec::new();
    for (_, error) in errors {
        match error {
            Error::Io(errs) => messages.extend(errs.iter().map(|(path, e)| format!("{path}: {e}"))),
            Error::Lex(errs) => messages.extend(
                errs.iter()
                    .map(|(expected, rest)| format!("expected {} before `{}`", expected.as_str(), snippet(rest))),
            ),
            Error::Parse(errs) => messages.extend(
                errs.iter()
                    .map(|(expected, found)| format!("expected {} but found `{}`", expected.as_str(), snippet(found))),
            ),
        }
    }
    messages.join("; ")
}

fn snippet(rest: &str) -> &str {
    let end = rest.char_indices().nth(20).map_or(rest.len(), |(i, _)| i);
    if end == 0 { "end of expression" } else { &rest[..end] }
}

fn to_val(value: &Value) -> Result<Val, String> {
    serde_json::from_value(value.clone()).map_err(|e| e.to_string())
}

fn from_val(val: &Val) -> Result<Value, String> {
    serde_json::from_str(&val.to_string()).map_err(|e| format!("result is not JSON ({e}): {val}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_build_json_from_input_and_variables() {
        let expr =
            Expr::compile("body", "{email: .properties.email, plan: $params.plan}", &["$params"]).expect("compiles");
        let out = expr.eval(&json!({"properties": {"email": "a@b"}}), &[&json!({"plan": "pro"})]);
        assert_eq!(out, Ok(json!({"email": "a@b", "plan": "pro"})));
    }

    #[test]
    fn path_templates_percent_encode_interpolated_values() {
        let path = Expr::template("path", "/contacts/\\(.id)", &[], true).expect("compiles");
        assert_eq!(path.eval_string(&json!({"id": "42"}), &[]), Ok("/contacts/42".into()));
        assert_eq!(
            path.eval_string(&json!({"id": "../admin?x=1"}), &[]),
            Ok("/contacts/..%2Fadmin%3Fx%3D1".into())
        );
    }

    #[test]
    fn templates_keep_literal_quotes() {
        let text = Expr::template("header", "say \"\\(.word)\"", &[], false).expect("compiles");
        assert_eq!(text.eval_string(&json!({"word": "hi"}), &[]), Ok("say \"hi\"".into()));
    }

    #[test]
    fn select_without_match_is_null() {
        let expr = Expr::compile("select", ".items[] | select(.n == 3)", &[]).expect("compiles");
        assert_eq!(expr.eval(&json!({"items": [{"n": 1}]}), &[]), Ok(Value::Null));
    }

    #[test]
    fn compile_errors_name_the_field_and_the_expression() {
        let err = Expr::compile("spec.rest.resourceTypes[contact].create.body", "{email: .email", &[])
            .expect_err("unbalanced brace");
        let message = err.to_string();
        assert!(
            message.starts_with("spec.rest.resourceTypes[contact].create.body: cannot compile `{email: .email`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_variables_and_functions_are_compile_errors() {
        let err = Expr::compile("when", "$nope.x", &["$params"]).expect_err("unknown variable");
        assert!(err.to_string().contains("$nope"), "{err}");
        let err = Expr::compile("when", "frobnicate(.)", &[]).expect_err("unknown function");
        assert!(err.to_string().contains("frobnicate"), "{err}");
    }

    #[test]
    fn runtime_errors_name_the_field() {
        let expr = Expr::compile("id", ".a + 1", &[]).expect("compiles");
        let err = expr.eval(&json!({"a": "text"}), &[]).expect_err("string + number");
        assert!(err.to_string().starts_with("id: `.a + 1` failed:"), "{err}");
    }

    #[test]
    fn conditions_use_jq_truthiness() {
        let cond = Expr::compile("successWhen", ".status < 300 and .body.ok", &[]).expect("compiles");
        assert_eq!(
            cond.eval_bool(&json!({"status": 200, "body": {"ok": true}}), &[]),
            Ok(true)
        );
        assert_eq!(cond.eval_bool(&json!({"status": 200, "body": {}}), &[]), Ok(false));
    }

    #[test]
    fn compiled_expressions_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Expr>();
    }
}
