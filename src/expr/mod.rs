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
//! message tells the user what to fix.
//!
//! Expressions come from tenants, and their inputs from targets: both are
//! hostile until checked. Compilation is bounded ([`limits`]) and offers
//! only the functions of [`ALLOWED`] (nothing that reads the environment,
//! reads input, writes to stderr or ends the process). Evaluation in `tether
//! run` happens in the [`sandbox`]: worker processes with a memory limit and
//! a deadline, so an expression that loops, allocates without end or
//! recurses too deep costs one worker, never the controller.

pub mod sandbox;

/// Runs `evaluate` (code that evaluates expressions and does not await) in
/// a turn of the sandbox: async callers wait for a free worker as a task,
/// so a burst of reconciles that each evaluate does not park a thread per
/// reconcile on the workers ([`sandbox::turn`]). Never nest it: the code
/// inside holds one of the few turns.
pub async fn in_turn<T>(evaluate: impl FnOnce() -> T) -> T {
    let _turn = sandbox::turn().await;
    evaluate()
}

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use jaq_json::Val;
use serde_json::Value;

type Data = data::JustLut<Val>;
type Filter = jaq_core::compile::Filter<jaq_core::Native<Data>>;

/// Limits on what an expression may be, checked before it is parsed (the
/// parser recurses on nesting).
pub mod limits {
    /// Longest expression or template, in bytes.
    pub const MAX_SOURCE_BYTES: usize = 16 * 1024;
    /// Deepest nesting of `(`, `[`, `{` and string interpolations.
    pub const MAX_NESTING: usize = 64;
    /// Most operators (`|`, `,`, arithmetic, comparisons) in one expression.
    pub const MAX_OPERATORS: usize = 1024;
    /// Most nesting keywords (`if`, `try`, `def`, `reduce`, `foreach`,
    /// `label`) in one expression.
    pub const MAX_KEYWORDS: usize = 256;
    /// Stack of the thread that parses: room for the deepest source the
    /// limits above allow (reserved, not used, unless needed).
    pub const COMPILE_STACK_BYTES: usize = 64 * 1024 * 1024;
    /// Compiled expressions [`super::Expr::compile_cached`] remembers.
    pub const CACHED_EXPRESSIONS: usize = 4096;
    /// Largest JSON an evaluation may produce, in bytes.
    pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
}

/// The jq functions an expression may call: jq's data functions. Left out:
/// everything that touches the process — `env` (and `$ENV`, never bound),
/// `input`/`inputs`, `debug`, `stderr`, `halt`, `halt_error`, and the local
/// time zone (`localtime`, `strflocaltime`). docs/expressions.md lists them.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    "@base64", "@base64d", "@html", "@htmld", "@json", "@sh", "@text", "@uri", "@urid", "abs",
    "acos", "acosh", "add", "all", "any", "arrays", "ascii_downcase", "ascii_upcase", "asin",
    "asinh", "atan", "atan2", "atanh", "booleans", "bsearch", "capture", "capture_of_match", "cbrt",
    "ceil", "combinations", "contains", "copysign", "cos", "cosh", "decode_base64", "decode_uri",
    "del", "delpaths", "drem", "empty", "encode_base64", "encode_uri", "endswith", "erf", "erfc",
    "error", "error_empty", "escape_html", "escape_sh", "exp", "exp10", "exp2", "explode", "expm1",
    "fabs", "false", "fdim", "finites", "first", "flatten", "floor", "fma", "fmax", "fmin", "fmod",
    "frexp", "from_entries", "fromdate", "fromdateiso8601", "fromjson", "gamma", "getpath",
    "gmtime", "group_by", "gsub", "has", "hypot", "ilogb", "implode", "in", "index", "indices",
    "infinite", "inside", "isarray", "isboolean", "isempty", "isfinite", "isinfinite", "isnan",
    "isnormal", "isnumber", "isobject", "isstring", "iterables", "j0", "j1", "jn", "join",
    "key_values", "keys", "keys_unsorted", "last", "ldexp", "length", "lgamma", "limit", "log",
    "log10", "log1p", "log2", "logb", "ltrim", "ltrimstr", "map", "map_values", "match", "matches",
    "max", "max_by", "max_by_or_empty", "min", "min_by", "min_by_or_empty", "mktime", "modf", "nan",
    "nearbyint", "nextafter", "nexttoward", "normals", "not", "now", "nth", "null", "nulls",
    "numbers", "objects", "path", "path_value", "paths", "pick", "pow", "pow10", "range", "recurse",
    "remainder", "repeat", "reverse", "rindex", "rint", "round", "rtrim", "rtrimstr", "scalars",
    "scalb", "scalbln", "scan", "scan_", "select", "setpath", "significand", "sin", "sinh", "skip",
    "sort", "sort_by", "split", "split_", "split_matches", "splits", "sqrt", "startswith",
    "strftime", "strings", "strptime", "sub", "tan", "tanh", "test", "tgamma", "to_entries",
    "toboolean", "tobytes", "todate", "todateiso8601", "tojson", "tonumber", "tostring", "totype",
    "transpose", "trim", "true", "trunc", "type", "unescape_html", "unique", "unique_by", "until",
    "utf8bytelength", "values", "walk", "while", "with_entries", "y0", "y1", "yn",
];

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
    /// The evaluation went past a limit of the sandbox (time, memory,
    /// nesting, output size).
    #[error("{field}: `{expression}` was stopped: {message}")]
    Limit {
        field: String,
        expression: String,
        message: String,
    },
}

/// A compiled expression with named variables (`$params`, `$steps`, ...).
pub struct Expr {
    field: String,
    /// What the user wrote.
    source: String,
    /// The jq program compiled from it (a template becomes a string literal).
    program: String,
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
        let vars: Vec<String> = vars.iter().map(|v| (*v).to_owned()).collect();
        let filter = compile_filter(source, &vars).map_err(|message| ExprError::Compile {
            field: field.to_owned(),
            expression: crate::text::shortened(source, 256),
            message,
        })?;
        Ok(Self {
            field: field.to_owned(),
            source: source.to_owned(),
            program: source.to_owned(),
            vars,
            filter,
        })
    }

    /// [`Expr::compile`], remembered: for expressions that live in objects
    /// reconciled again and again (`propertiesFrom`), so a resync does not
    /// parse them anew. Bounded: the memory is dropped when it holds
    /// [`limits::CACHED_EXPRESSIONS`].
    pub fn compile_cached(field: &str, source: &str, vars: &[&str]) -> Result<std::sync::Arc<Self>, ExprError> {
        type Key = (String, String, Vec<String>);
        type Cache = std::collections::HashMap<Key, Result<std::sync::Arc<Expr>, ExprError>>;
        static CACHE: std::sync::OnceLock<std::sync::Mutex<Cache>> = std::sync::OnceLock::new();
        let key: Key = (
            field.to_owned(),
            source.to_owned(),
            vars.iter().map(|v| (*v).to_owned()).collect(),
        );
        let cache = CACHE.get_or_init(Default::default);
        let lock = || cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = lock().get(&key) {
            return found.clone();
        }
        let compiled = Self::compile(field, source, vars).map(std::sync::Arc::new);
        let mut cache = lock();
        if cache.len() >= limits::CACHED_EXPRESSIONS {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        compiled
    }

    /// Compiles a text template: `text` is the inside of a jq string literal
    /// (`/contacts/\(.id)`); with `encode_uri` interpolations are
    /// percent-encoded.
    pub fn template(field: &str, text: &str, vars: &[&str], encode_uri: bool) -> Result<Self, ExprError> {
        let escaped = escape_template(text);
        let program = if encode_uri {
            format!("@uri \"{escaped}\"")
        } else {
            format!("\"{escaped}\"")
        };
        let mut expr = Self::compile(field, &program, vars).map_err(|e| match e {
            ExprError::Compile { field, message, .. } => ExprError::Compile {
                field,
                expression: crate::text::shortened(text, 256),
                message,
            },
            other => other,
        })?;
        expr.source = text.to_owned();
        Ok(expr)
    }

    /// The expression as the user wrote it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to the first output (`null` when there is none: a `select`
    /// that matches nothing), in the [`sandbox`] when one is installed.
    pub fn eval(&self, input: &Value, vars: &[&Value]) -> Result<Value, ExprError> {
        if vars.len() != self.vars.len() {
            return Err(self.eval_error(format!(
                "{} variables given for {} declared",
                vars.len(),
                self.vars.len()
            )));
        }
        match sandbox::evaluate(&self.program, &self.vars, input, vars) {
            Some(Ok(value)) => Ok(value),
            Some(Err(sandbox::Failure::Eval(message))) => Err(self.eval_error(message)),
            Some(Err(sandbox::Failure::Limit(message))) => Err(ExprError::Limit {
                field: self.field.clone(),
                expression: self.quoted(),
                message,
            }),
            None => match run_filter(&self.filter, input, vars) {
                Ok(value) => Ok(value),
                Err(sandbox::Failure::Eval(message)) => Err(self.eval_error(message)),
                Err(sandbox::Failure::Limit(message)) => Err(ExprError::Limit {
                    field: self.field.clone(),
                    expression: self.quoted(),
                    message,
                }),
            },
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
        ExprError::Type {
            field: self.field.clone(),
            expression: self.quoted(),
            expected,
            got: crate::text::shortened(&got.to_string(), 80),
        }
    }

    fn eval_error(&self, message: String) -> ExprError {
        ExprError::Eval {
            field: self.field.clone(),
            expression: self.quoted(),
            message: crate::text::shortened(&message, 512),
        }
    }

    /// The source, short enough for a condition message.
    fn quoted(&self) -> String {
        crate::text::shortened(&self.source, 256)
    }
}

/// The text of a template as the inside of a jq string literal: its own
/// double quotes escaped, and those of string literals inside `\( … )`
/// interpolations left as they are (`\(.name // "unnamed")`).
fn escape_template(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    // Parentheses open inside an interpolation (0: literal text), and
    // whether a string literal of the interpolation is open.
    let (mut depth, mut in_string) = (0usize, false);
    while let Some(c) = chars.next() {
        match (depth, in_string, c) {
            (0, _, '\\') => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.push(next);
                    if next == '(' {
                        depth = 1;
                    }
                }
            }
            (0, _, '"') => out.push_str("\\\""),
            (0, _, _) => out.push(c),
            (_, true, '\\') => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (_, true, '"') => {
                out.push(c);
                in_string = false;
            }
            (_, true, _) => out.push(c),
            (_, false, '"') => {
                out.push(c);
                in_string = true;
            }
            (_, false, '(') => {
                out.push(c);
                depth += 1;
            }
            (_, false, ')') => {
                out.push(c);
                depth -= 1;
            }
            _ => out.push(c),
        }
    }
    out
}

/// Checks the limits that protect the parser, then compiles `source` with
/// the allowed functions only.
///
/// jaq's parser recurses for every nesting keyword (`try`, `if`, `def`,
/// `reduce`, unary `-`, …), and a stack overflow is an abort that no
/// `catch_unwind` sees: so it runs on a thread of its own with a stack that
/// fits the deepest source the limits allow, never on a runtime worker's
/// 2 MiB.
fn compile_filter(source: &str, vars: &[String]) -> Result<Filter, String> {
    check_shape(source)?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("expr-compile".into())
            .stack_size(limits::COMPILE_STACK_BYTES)
            .spawn_scoped(scope, || compile_here(source, vars))
            .map_err(|e| format!("cannot start the compiler: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the compiler failed on this expression".into()))
    })
}

/// [`compile_filter`] on this thread: for the sandbox's workers, whose
/// address space has no room for another large stack, and where a stack
/// overflow ends only the worker.
pub(crate) fn compile_in_place(source: &str, vars: &[String]) -> Result<Filter, String> {
    check_shape(source)?;
    compile_here(source, vars)
}

fn compile_here(source: &str, vars: &[String]) -> Result<Filter, String> {
    let program = File { code: source, path: () };
    let allowed = |name: &str| ALLOWED.contains(&name);
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .filter(|def| allowed(def.name));
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, program)
        .map_err(|errors| describe_load_errors(&errors))?;
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| allowed(name));
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(vars.iter().map(String::as_str))
        .compile(modules)
        .map_err(|errors| {
            let names: Vec<String> = errors
                .iter()
                .flat_map(|(_, errs)| {
                    errs.iter().map(|(name, undefined)| {
                        format!(
                            "undefined {undefined:?} `{name}` (see docs/expressions.md for the functions Tether allows)"
                        )
                    })
                })
                .collect();
            names.join("; ")
        })
}

/// Refuses sources that would make the parser recurse or work too much.
fn check_shape(source: &str) -> Result<(), String> {
    if source.len() > limits::MAX_SOURCE_BYTES {
        return Err(format!(
            "the expression is {} bytes; the limit is {}",
            source.len(),
            limits::MAX_SOURCE_BYTES
        ));
    }
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '|' | ',' | '+' | '-' | '*' | '/' | '%' | '=' | '<' | '>' | '?' => operators += 1,
            _ => {}
        }
    }
    if deepest > limits::MAX_NESTING {
        return Err(format!(
            "nesting is {deepest} deep; the limit is {}",
            limits::MAX_NESTING
        ));
    }
    if operators > limits::MAX_OPERATORS {
        return Err(format!("{operators} operators; the limit is {}", limits::MAX_OPERATORS));
    }
    let keywords = source
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| matches!(*word, "if" | "try" | "def" | "reduce" | "foreach" | "label"))
        .count();
    if keywords > limits::MAX_KEYWORDS {
        return Err(format!(
            "{keywords} nesting keywords (if, try, def, reduce, foreach, label); the limit is {}",
            limits::MAX_KEYWORDS
        ));
    }
    Ok(())
}

/// Runs a compiled filter on this thread: the first output as JSON. A
/// `halt` (not offered, but defence in depth) is an error, never an exit.
pub(crate) fn run_filter(filter: &Filter, input: &Value, vars: &[&Value]) -> Result<Value, sandbox::Failure> {
    let input = to_val(input).map_err(sandbox::Failure::Eval)?;
    let vars = vars
        .iter()
        .map(|v| to_val(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(sandbox::Failure::Eval)?;
    let ctx = Ctx::<Data>::new(&filter.lut, Vars::new(vars));
    let mut outputs = filter.id.run((ctx, input));
    match outputs.next() {
        None => Ok(Value::Null),
        Some(Ok(val)) => from_val(&val),
        Some(Err(exn)) => Err(sandbox::Failure::Eval(match exn.get_err() {
            Ok(err) => err.to_string(),
            Err(_) => "the expression tried to stop the program".to_owned(),
        })),
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
    let cut = crate::text::prefix(rest, 40);
    if cut.is_empty() { "end of expression" } else { cut }
}

fn to_val(value: &Value) -> Result<Val, String> {
    serde_json::from_value(value.clone()).map_err(|e| e.to_string())
}

/// The JSON of a jq value: bounded in size, and parsed with serde_json's
/// nesting limit, so a value built too deep is an error, not a stack
/// overflow further on.
fn from_val(val: &Val) -> Result<Value, sandbox::Failure> {
    let text = val.to_string();
    if text.len() > limits::MAX_OUTPUT_BYTES {
        return Err(sandbox::Failure::Limit(format!(
            "the result is {} bytes; the limit is {}",
            text.len(),
            limits::MAX_OUTPUT_BYTES
        )));
    }
    serde_json::from_str(&text).map_err(|e| sandbox::Failure::Limit(format!("the result is not usable JSON: {e}")))
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
    fn string_literals_inside_interpolations_are_jq_strings() {
        let greet = Expr::template("header", "\\(\"extName = \" + (.name | tojson))", &[], false).expect("compiles");
        assert_eq!(
            greet.eval_string(&json!({"name": "ada"}), &[]),
            Ok("extName = \"ada\"".into())
        );
        let fallback = Expr::template("path", "/contacts/\\(.name // \"unnamed\")", &[], true).expect("compiles");
        assert_eq!(fallback.eval_string(&json!({}), &[]), Ok("/contacts/unnamed".into()));
        let nested = Expr::template("header", "say \"\\(.a + \")\")\" now", &[], false).expect("compiles");
        assert_eq!(nested.eval_string(&json!({"a": "x"}), &[]), Ok("say \"x)\" now".into()));
    }

    #[test]
    fn template_errors_quote_what_the_user_wrote() {
        let err = Expr::template("path", "/c/\\(.a +)", &[], true).expect_err("bad");
        assert!(err.to_string().contains("`/c/\\(.a +)`"), "{err}");
    }

    #[test]
    fn cached_compiles_are_shared_and_keep_their_errors() {
        let a = Expr::compile_cached("spec.propertiesFrom.x", ".refs.a.externalId", &[]).expect("compiles");
        let b = Expr::compile_cached("spec.propertiesFrom.x", ".refs.a.externalId", &[]).expect("compiles");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let err = Expr::compile_cached("spec.propertiesFrom.y", "env", &[]).expect_err("refused");
        assert!(err.to_string().starts_with("spec.propertiesFrom.y"), "{err}");
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

    #[test]
    fn functions_that_touch_the_process_are_not_offered() {
        for source in [
            "halt",
            "halt_error",
            "\"x\" | halt_error(1)",
            "env",
            "$ENV.PATH",
            "env.HOME",
            "input",
            "[inputs]",
            "debug",
            "stderr",
            "localtime",
        ] {
            let err = Expr::compile("spec.steps[a].when", source, &[]).expect_err(source);
            assert!(
                matches!(&err, ExprError::Compile { field, .. } if field == "spec.steps[a].when"),
                "{source}: {err}"
            );
        }
    }

    #[test]
    fn every_allowed_function_compiles_and_nothing_else_is_offered() {
        // A name in ALLOWED that no library defines would be a typo hiding a
        // function users expect; one that touches the process must not be there.
        for name in ["env", "halt", "halt_error", "input", "inputs", "debug", "stderr"] {
            assert!(!ALLOWED.contains(&name), "{name}");
        }
        for source in [
            "[1,2] | add",
            "now | type",
            "\"a,b\" | split(\",\")",
            "@base64 \"\\(.)\"",
            "test(\"a\")",
        ] {
            Expr::compile("f", source, &[]).unwrap_or_else(|e| panic!("{source}: {e}"));
        }
    }

    #[test]
    fn sources_too_long_or_too_deep_are_refused_before_parsing() {
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        let long = ".a | ".repeat(5000);
        let operators = "1".to_owned() + &"+1".repeat(2000);
        let tries = "try ".repeat(2000) + "1";
        let ifs = "if 1 then ".repeat(1100) + "1" + &" else 2 end".repeat(1100);
        let defs = "def f: ".repeat(1600) + "1" + &"; f".repeat(1600);
        // Compiled on a stack as small as a runtime worker's: the refusal must
        // come before the parser recurses.
        let handle = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                [deep, long, operators, tries, ifs, defs]
                    .iter()
                    .map(|s| Expr::compile("body", s, &[]).map(|_| ()).map_err(|e| e.to_string()))
                    .collect::<Vec<_>>()
            })
            .expect("thread");
        let results = handle.join().expect("no stack overflow");
        for result in results {
            let message = result.expect_err("refused");
            assert!(message.contains("limit"), "{message}");
        }
    }

    #[test]
    fn threat_sources_just_inside_the_limits_parse_without_overflowing_a_small_stack() {
        // 250 nested tries and 1,000 unary minus: inside every limit, and
        // deeper than a 2 MiB stack can parse; the compiler thread has room.
        let sources = ["try ".repeat(250) + "1", "-".repeat(1000) + "1"];
        let handle = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                sources
                    .iter()
                    .map(|s| Expr::compile("when", s, &[]).is_ok())
                    .collect::<Vec<_>>()
            })
            .expect("thread");
        assert_eq!(handle.join().expect("no stack overflow"), [true, true]);
    }

    #[test]
    fn a_value_nested_past_the_limit_is_an_error_not_a_crash() {
        let expr = Expr::compile("outputs.x", "reduce range(300) as $i (0; [.])", &[]).expect("compiles");
        let err = expr.eval(&Value::Null, &[]).expect_err("too deep");
        assert!(matches!(err, ExprError::Limit { .. }), "{err}");
    }

    #[test]
    fn a_result_past_the_size_limit_is_an_error() {
        let expr = Expr::compile("outputs.x", "[range(200000)] | tostring", &[]).expect("compiles");
        let err = expr.eval(&Value::Null, &[]).expect_err("too large");
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn errors_quote_what_the_user_wrote_cut_on_a_character_boundary() {
        let source = format!("\"{}\" | error", "é€😀".repeat(200));
        let err = Expr::compile("body", &source, &[])
            .expect("compiles")
            .eval(&Value::Null, &[])
            .expect_err("error");
        assert!(err.to_string().len() < 2048, "{err}");
    }
}
