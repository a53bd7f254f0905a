//! The subset of Helm's Go templates the podlens chart uses, rendered here so
//! that the plain manifests are generated from the chart without a helm
//! binary. Anything outside the subset is an error, never passed through:
//!
//! - `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`, `{{ .Release.Name }}`,
//!   `{{ .Chart.Version }}`, `{{ .Chart.AppVersion }}`
//! - pipelines into `quote`, `toJson`, `toYaml`, `nindent N`, `indent N`,
//!   and the call forms `toYaml X`, `toJson X`, `quote X`
//! - `{{ if X }}` / `{{ else }}` / `{{ end }}` with Go's truthiness
//! - `{{-` / `-}}` whitespace trimming, and `{{/* comments */}}`
//!
//! A path with no value is an error (Helm would render an empty string).

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("{template}: unclosed {{{{ at byte {at}")]
    Unclosed { template: String, at: usize },
    #[error("{template}: {{{{ {action} }}}}: {why}")]
    Action { template: String, action: String, why: String },
    #[error("{template}: {{{{ end }}}} or {{{{ else }}}} without an if")]
    Stray { template: String },
    #[error("{template}: an if without {{{{ end }}}}")]
    UnclosedIf { template: String },
}

/// What `.Release` and `.Chart` stand for, and the values.
#[derive(Debug, Clone)]
pub struct Context {
    pub values: Value,
    pub release_name: String,
    pub namespace: String,
    pub chart_version: String,
    pub app_version: String,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Expr(String),
    If { cond: String, then: Vec<Node>, otherwise: Vec<Node> },
}

/// Renders `template` (named `name` in errors).
pub fn render(name: &str, template: &str, ctx: &Context) -> Result<String, TemplateError> {
    let tokens = tokenize(name, template)?;
    let mut pos = 0;
    let nodes = parse(name, &tokens, &mut pos, false)?;
    if pos != tokens.len() {
        return Err(TemplateError::Stray { template: name.to_owned() });
    }
    let mut out = String::new();
    eval(name, &nodes, ctx, &mut out)?;
    Ok(out)
}

#[derive(Debug)]
enum Token {
    Text(String),
    Action(String),
}

fn tokenize(name: &str, t: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut rest = t;
    let mut offset = 0;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(TemplateError::Unclosed { template: name.to_owned(), at: offset + open })?;
        let mut action = &after[..close];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_next = true;
            action = a;
        }
        tokens.push(Token::Text(text.to_owned()));
        let action = action.trim();
        if !(action.starts_with("/*") && action.ends_with("*/")) {
            tokens.push(Token::Action(action.to_owned()));
        }
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    tokens.push(Token::Text(if trim_next { rest.trim_start() } else { rest }.to_owned()));
    Ok(tokens)
}

/// Nodes up to the matching `end` (or `else`, left for the caller) when `nested`.
fn parse(name: &str, tokens: &[Token], pos: &mut usize, nested: bool) -> Result<Vec<Node>, TemplateError> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.get(*pos) {
        match token {
            Token::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                *pos += 1;
            }
            Token::Action(a) if a == "end" || a == "else" => {
                if !nested {
                    return Err(TemplateError::Stray { template: name.to_owned() });
                }
                return Ok(nodes);
            }
            Token::Action(a) => {
                *pos += 1;
                let Some(cond) = a.strip_prefix("if ") else {
                    nodes.push(Node::Expr(a.clone()));
                    continue;
                };
                let then = parse(name, tokens, pos, true)?;
                let mut otherwise = Vec::new();
                if matches!(tokens.get(*pos), Some(Token::Action(a)) if a == "else") {
                    *pos += 1;
                    otherwise = parse(name, tokens, pos, true)?;
                }
                match tokens.get(*pos) {
                    Some(Token::Action(a)) if a == "end" => *pos += 1,
                    _ => return Err(TemplateError::UnclosedIf { template: name.to_owned() }),
                }
                nodes.push(Node::If { cond: cond.trim().to_owned(), then, otherwise });
            }
        }
    }
    if nested {
        return Err(TemplateError::UnclosedIf { template: name.to_owned() });
    }
    Ok(nodes)
}

fn eval(name: &str, nodes: &[Node], ctx: &Context, out: &mut String) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Expr(e) => {
                let v = pipeline(e, ctx).map_err(|why| action_error(name, e, why))?;
                out.push_str(&scalar(&v).map_err(|why| action_error(name, e, why))?);
            }
            Node::If { cond, then, otherwise } => {
                let v = pipeline(cond, ctx).map_err(|why| action_error(name, &format!("if {cond}"), why))?;
                eval(name, if truthy(&v) { then } else { otherwise }, ctx, out)?;
            }
        }
    }
    Ok(())
}

fn action_error(name: &str, action: &str, why: String) -> TemplateError {
    TemplateError::Action { template: name.to_owned(), action: action.to_owned(), why }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How a value prints on its own: maps and lists need toJson or toYaml.
/// Helm reads numbers of values.yaml as float64 and prints them with Go's
/// `%v`: 16777216 becomes `1.6777216e+07`, so templates pipe numbers that
/// must stay integers through `int64`.
fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_f64() => Ok(go_float(n.as_f64().unwrap_or_default())),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err("no value".to_owned()),
        Value::Array(_) | Value::Object(_) => Err("a list or map needs toJson or toYaml".to_owned()),
    }
}

/// Go's `%v` of a float64 (strconv 'g' with the shortest precision): the
/// exponent form when the exponent is below -4 or at least max(6, digits)
/// (for whole numbers that is from 1e6 on, unless every digit is needed).
pub fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".to_owned();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits = mantissa.trim_start_matches('-').replace('.', "").len() as i32;
    let point = exp + 1;
    let mut eprec = 6;
    if eprec > digits && digits >= point {
        eprec = digits;
    }
    if exp < -4 || exp >= eprec {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        format!("{f}")
    }
}

/// Values as Helm holds them: every number of values.yaml a float64.
pub fn as_helm_values(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(as_helm_values).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), as_helm_values(v))).collect()),
        other => other.clone(),
    }
}

fn pipeline(expr: &str, ctx: &Context) -> Result<Value, String> {
    let mut stages = expr.split('|').map(str::trim);
    let first = stages.next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    let mut value = match words.as_slice() {
        [term] => term_value(term, ctx)?,
        [func, arg @ ..] => apply(func, arg, None, ctx)?,
        [] => return Err("empty action".to_owned()),
    };
    for stage in stages {
        let words: Vec<&str> = stage.split_whitespace().collect();
        let (func, args) = words.split_first().ok_or("empty pipeline stage")?;
        value = apply(func, args, Some(value), ctx)?;
    }
    Ok(value)
}

/// `func args... [piped]`: the piped value is the last argument, as in Go.
fn apply(func: &str, args: &[&str], piped: Option<Value>, ctx: &Context) -> Result<Value, String> {
    let mut vals: Vec<Value> = Vec::new();
    for a in args {
        vals.push(match a.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => term_value(a, ctx)?,
        });
    }
    vals.extend(piped);
    let count = |n: usize| if vals.len() == n { Ok(()) } else { Err(format!("{func} takes {n} argument(s)")) };
    let string = |s: String| Ok(Value::String(s));
    match func {
        "quote" => {
            count(1)?;
            string(serde_json::to_string(&Value::String(scalar(&vals[0])?)).map_err(|e| e.to_string())?)
        }
        "toJson" => {
            count(1)?;
            string(serde_json::to_string(&vals[0]).map_err(|e| e.to_string())?)
        }
        "toYaml" => {
            count(1)?;
            let yaml = serde_yaml::to_string(&vals[0]).map_err(|e| e.to_string())?;
            string(yaml.trim_end_matches('\n').to_owned())
        }
        "indent" | "nindent" => {
            count(2)?;
            let n = vals[0].as_u64().ok_or("the indent must be a number")? as usize;
            let pad = " ".repeat(n);
            let text = scalar(&vals[1])?;
            let body: Vec<String> = text.lines().map(|l| format!("{pad}{l}")).collect();
            string(format!("{}{}", if func == "nindent" { "\n" } else { "" }, body.join("\n")))
        }
        "int64" | "int" => {
            count(1)?;
            match &vals[0] {
                Value::Number(n) => {
                    let f = n.as_f64().ok_or("not a number")?;
                    // Go's conversion truncates toward zero
                    Ok(Value::from(f.trunc() as i64))
                }
                Value::String(s) => Ok(Value::from(s.trim().parse::<i64>().unwrap_or(0))),
                Value::Bool(b) => Ok(Value::from(i64::from(*b))),
                _ => Ok(Value::from(0)),
            }
        }
        other => Err(format!("function {other:?} is outside the subset this renderer supports")),
    }
}

fn term_value(term: &str, ctx: &Context) -> Result<Value, String> {
    match term {
        ".Release.Namespace" => return Ok(Value::String(ctx.namespace.clone())),
        ".Release.Name" => return Ok(Value::String(ctx.release_name.clone())),
        ".Chart.Version" => return Ok(Value::String(ctx.chart_version.clone())),
        ".Chart.AppVersion" => return Ok(Value::String(ctx.app_version.clone())),
        _ => {}
    }
    let path = term.strip_prefix(".Values.").ok_or_else(|| format!("{term:?} is outside the subset"))?;
    let mut v = &ctx.values;
    for key in path.split('.') {
        v = v.get(key).ok_or_else(|| format!(".Values.{path}: no value"))?;
    }
    Ok(v.clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> Context {
        Context {
            values: json!({"a": {"n": 3, "s": "x y", "on": true, "off": false, "list": ["p", "q"], "map": {"k": 1}, "empty": []}}),
            release_name: "rel".into(),
            namespace: "ns".into(),
            chart_version: "1.2.3".into(),
            app_version: "0.1.0".into(),
        }
    }

    fn r(t: &str) -> Result<String, TemplateError> {
        render("t.yaml", t, &ctx())
    }

    #[test]
    fn values_functions_and_trimming() {
        assert_eq!(
            r("n: {{ .Values.a.n }} s: {{ .Values.a.s | quote }} ns: {{ .Release.Namespace }}").unwrap(),
            "n: 3 s: \"x y\" ns: ns"
        );
        assert_eq!(
            r("l: {{ .Values.a.list | toJson }} m: {{ toJson .Values.a.map }}").unwrap(),
            "l: [\"p\",\"q\"] m: {\"k\":1}"
        );
        assert_eq!(r("x:\n  {{- toYaml .Values.a.list | nindent 2 }}\ny").unwrap(), "x:\n  - p\n  - q\ny");
        assert_eq!(r("a {{- /* note */}} b").unwrap(), "a b");
        assert_eq!(r("a  {{- .Values.a.n -}}  b").unwrap(), "a3b");
    }

    #[test]
    fn numbers_print_as_helm_prints_its_float64_values() {
        for (f, go) in [
            (7701.0, "7701"),
            (65536.0, "65536"),
            (131072.0, "131072"),
            (1e6, "1e+06"),
            (16777216.0, "1.6777216e+07"),
            (4194304.0, "4.194304e+06"),
            (0.1, "0.1"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(go_float(f), go, "{f}");
        }
        let mut c = ctx();
        c.values = as_helm_values(&json!({"big": 16777216, "port": 9467}));
        assert_eq!(
            render("t", "{{ .Values.big }} {{ .Values.big | int64 }} {{ .Values.port }}", &c).unwrap(),
            "1.6777216e+07 16777216 9467"
        );
    }

    #[test]
    fn conditionals_follow_go_truthiness() {
        let t = "{{- if .Values.a.on }}on{{ else }}off{{ end }}|{{ if .Values.a.off }}1{{ else }}0{{ end }}|{{ if .Values.a.empty }}e{{ end }}|{{ if .Values.a.list }}{{ if .Values.a.n }}nested{{ end }}{{ end }}";
        assert_eq!(r(t).unwrap(), "on|0||nested");
    }

    #[test]
    fn anything_outside_the_subset_is_an_error() {
        for (t, needle) in [
            ("{{ .Values.a.missing }}", "no value"),
            ("{{ .Values.a.map }}", "toJson or toYaml"),
            ("{{ include \"x\" . }}", "outside the subset"),
            ("{{ .Values.a.n | default 3 }}", "outside the subset"),
            ("{{ $x := 1 }}", "outside the subset"),
            ("{{ .Values.a.n ", "unclosed"),
            ("{{ if .Values.a.on }}x", "without"),
            ("x{{ end }}", "without an if"),
        ] {
            let err = r(t).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("t.yaml"), "{t}: {err}");
        }
    }
}
