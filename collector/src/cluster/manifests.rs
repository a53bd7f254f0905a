//! Cluster state loaded from a directory of manifests as kept in a GitOps repo, so the collector can
//! resolve workloads and policies without a live API server. One bad manifest must not hide the rest
//! of the repo: per-document problems are collected in [`Manifests::errors`], and only an unreadable
//! root directory or an exceeded bound fails [`load_dir`].

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::{fs, io};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

pub const MAX_DEPTH: usize = 16;
/// Counts manifest files only, so a repo that also vendors source code is not refused.
pub const MAX_FILES: usize = 10_000;
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Re-deserializations spent finding the field behind one serde error, bounding the cost of a bad object.
const MAX_PROBES: usize = 512;

/// A workload controller reduced to what owner resolution needs (Pod -> ReplicaSet -> Deployment,
/// Pod -> Job -> CronJob). Its spec is never read, so spec drift across versions cannot break loading.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

/// A manifest that could not be used. `document` is 1-based within the file (None when the whole file
/// failed); `items` are 0-based indexes into the `items` of a List, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    pub file: String,
    pub document: Option<usize>,
    pub items: Vec<usize>,
    /// `Kind namespace/name`, or `Kind name` when cluster-scoped.
    pub object: Option<String>,
    /// Such as `spec.containers[0].ports[0].containerPort`, when it could be found.
    pub field: Option<String>,
    pub message: String,
}

impl ManifestError {
    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(document) = self.document {
            out += &format!(": document {document}");
        }
        for (n, item) in self.items.iter().enumerate() {
            out += &format!("{}items[{item}]", if n == 0 { ", " } else { "." });
        }
        if let Some(object) = &self.object {
            out += &format!(" ({object})");
        }
        match &self.field {
            Some(field) => format!("{out}: {field}: {}", self.message),
            None => format!("{out}: {}", self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read manifest directory {}: {source}", path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("{}: nested deeper than {MAX_DEPTH} directories", path.display())]
    TooDeep { path: PathBuf },
    #[error("{}: more than {MAX_FILES} manifest files", path.display())]
    TooManyFiles { path: PathBuf },
    #[error("{}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit", path.display())]
    FileTooLarge { path: PathBuf, size: u64 },
}

/// Objects of kept kinds, one per kind/namespace/name: the later file in path order wins. Loading only
/// appends to the vectors or overwrites in place, which keeps the private duplicate index valid, so
/// reorder them only after the last [`parse_file`].
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub policies: Vec<NetworkPolicy>,
    pub owners: Vec<OwnerObject>,
    /// Other kinds, keyed `Kind` for the core group and `Kind.group` otherwise, so a Knative
    /// `Service.serving.knative.dev` is not mistaken for a core Service. `<no kind>` counts mappings
    /// with neither apiVersion nor kind, such as Helm values files.
    pub skipped: BTreeMap<String, usize>,
    pub errors: Vec<ManifestError>,
    pub warnings: Vec<String>,
    index: HashMap<Key, (String, usize)>,
}

/// A problem inside one object, before it is placed in a file.
#[derive(Debug)]
struct Fault {
    field: Option<String>,
    message: String,
}

impl Fault {
    fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        Fault { field: field.map(str::to_string), message: message.into() }
    }

    fn at(self, file: &str, document: Option<usize>, items: &[usize], object: Option<String>) -> ManifestError {
        let (file, items, field, message) = (file.to_string(), items.to_vec(), self.field, self.message);
        ManifestError { file, document, items, object, field, message }
    }
}

type Keeper = fn(&mut Manifests, Value, String) -> Result<(), Fault>;
type Pick<T> = fn(&mut Manifests) -> &mut Vec<T>;
type Key = (String, String, String);

/// Kept kinds. A kind of the same group at another version is an error rather than a skip: it is
/// almost surely meant as this kind, and skipping would hide it.
const KINDS: &[(&str, &str, Keeper)] = &[
    ("v1", "Pod", |m, v, at| m.keep(v, true, |m| &mut m.pods, at)),
    ("v1", "Namespace", |m, v, at| m.keep(v, false, |m| &mut m.namespaces, at)),
    ("v1", "Service", |m, v, at| m.keep(v, true, |m| &mut m.services, at)),
    ("v1", "Node", |m, v, at| m.keep(v, false, |m| &mut m.nodes, at)),
    ("discovery.k8s.io/v1", "EndpointSlice", |m, v, at| m.keep(v, true, |m| &mut m.endpoint_slices, at)),
    ("networking.k8s.io/v1", "NetworkPolicy", |m, v, at| {
        check_policy(&v, "", "")?;
        m.keep(v, true, |m| &mut m.policies, at)
    }),
    ("apps/v1", "Deployment", Manifests::keep_owner),
    ("apps/v1", "StatefulSet", Manifests::keep_owner),
    ("apps/v1", "DaemonSet", Manifests::keep_owner),
    ("apps/v1", "ReplicaSet", Manifests::keep_owner),
    ("batch/v1", "Job", Manifests::keep_owner),
    ("batch/v1", "CronJob", Manifests::keep_owner),
];

/// Loads every manifest under `root`. Hidden entries (`.git`, `.github`, `.gitlab-ci.yml`) are skipped
/// as tooling config; symlinked directories are not followed, so a link cycle cannot trip the depth bound.
pub fn load_dir(root: &Path) -> Result<Manifests, LoadError> {
    let mut out = Manifests::default();
    let mut files = Vec::new();
    collect(root, 0, &mut files, &mut out.errors)?;
    // Path order decides which duplicate wins, so it must not depend on the filesystem's listing order.
    files.sort();
    for path in files {
        let file = path.display().to_string();
        match read_bounded(&path)? {
            Ok(text) => parse_file(&file, &text, &mut out),
            Err(message) => out.errors.push(Fault::new(None, message).at(&file, None, &[], None)),
        }
    }
    Ok(out)
}

fn collect(dir: &Path, depth: usize, files: &mut Vec<PathBuf>, errs: &mut Vec<ManifestError>) -> Result<(), LoadError> {
    let read_dir_error = |source| LoadError::ReadDir { path: dir.to_path_buf(), source };
    if depth > MAX_DEPTH {
        return Err(LoadError::TooDeep { path: dir.to_path_buf() });
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if depth == 0 => return Err(read_dir_error(e)),
        Err(e) => {
            let fault = Fault::new(None, format!("cannot read directory: {e}"));
            errs.push(fault.at(&dir.display().to_string(), None, &[], None));
            return Ok(());
        }
    };
    for entry in entries {
        let entry = entry.map_err(read_dir_error)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(read_dir_error)?;
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        if file_type.is_dir() {
            collect(&path, depth + 1, files, errs)?;
        } else if matches!(ext.as_deref(), Some("yaml" | "yml" | "json")) && path.is_file() {
            if files.len() == MAX_FILES {
                return Err(LoadError::TooManyFiles { path });
            }
            files.push(path);
        }
    }
    Ok(())
}

/// The outer error is fatal (a bound); the inner one is a per-file problem to report and move past.
fn read_bounded(path: &Path) -> Result<Result<String, String>, LoadError> {
    // Capping the read itself, rather than trusting a stat, also covers a file that grows meanwhile.
    let mut bytes = Vec::new();
    if let Err(e) = fs::File::open(path).and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)) {
        return Ok(Err(format!("cannot read file: {e}")));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(LoadError::FileTooLarge { path: path.to_path_buf(), size });
    }
    Ok(String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (bad byte at offset {})", e.utf8_error().valid_up_to())))
}

/// Parses one file's text into `out`. A name ending in `.json` is one JSON document; anything else is a
/// YAML stream. Empty documents are ignored.
pub fn parse_file(path_for_messages: &str, text: &str, out: &mut Manifests) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file = path_for_messages;
    let fail = |document, message: String| Fault::new(None, message).at(file, Some(document), &[], None);
    if file.to_ascii_lowercase().ends_with(".json") {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => out.add(file, 1, &[], value, 0),
            Err(e) => out.errors.push(fail(1, format!("invalid JSON: {e}"))),
        }
        return;
    }
    for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        // Merge keys (`<<: *defaults`) are applied as kubectl does; serde_yaml leaves them literal.
        match serde_yaml::Value::deserialize(document).and_then(|mut v| v.apply_merge().map(|()| v)) {
            Ok(yaml) => match serde_json::to_value(&yaml) {
                Ok(value) => out.add(file, n + 1, &[], value, 0),
                Err(e) => out.errors.push(fail(n + 1, format!("not representable as JSON: {e}"))),
            },
            Err(e) => {
                // libyaml cannot resynchronise after a syntax error, so later documents are unreachable.
                out.errors.push(fail(n + 1, format!("invalid YAML: {e}; the rest of the file is not read")));
                break;
            }
        }
    }
}

impl Manifests {
    fn add(&mut self, file: &str, document: usize, items: &[usize], value: Value, list_depth: usize) {
        let mut fail = |object, fault: Fault| self.errors.push(fault.at(file, Some(document), items, object));
        let mut map = match value {
            Value::Null => return,
            other => match Map::deserialize(other) {
                Ok(map) => map,
                Err(e) => return fail(None, Fault::new(None, e.to_string())),
            },
        };
        let text = |key| map.get(key).map(|v| String::deserialize(v).map_err(|e| Fault::new(Some(key), e.to_string())));
        let (api_version, kind) = match (text("apiVersion").transpose(), text("kind").transpose()) {
            (Ok(Some(api_version)), Ok(Some(kind))) => (api_version, kind),
            (Ok(None), Ok(None)) => return *self.skipped.entry("<no kind>".to_string()).or_default() += 1,
            (Err(fault), _) | (_, Err(fault)) => return fail(None, fault),
            (Ok(None), _) => return fail(None, Fault::new(Some("apiVersion"), "missing")),
            (_, Ok(None)) => return fail(None, Fault::new(Some("kind"), "missing")),
        };
        if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
            let items_value = match map.remove("items").map(Option::<Vec<Value>>::deserialize) {
                None | Some(Ok(None)) => Vec::new(),
                Some(Ok(Some(items))) => items,
                Some(Err(e)) => return fail(Some(kind), Fault::new(Some("items"), e.to_string())),
            };
            if list_depth >= 2 {
                return fail(Some(kind), Fault::new(None, "a List nested more than one level deep"));
            }
            // Items of a typed list fetched from the API (PodList) omit their own apiVersion and kind.
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            for (i, mut item) in items_value.into_iter().enumerate() {
                if let (Some(item_kind), Value::Object(item)) = (item_kind, &mut item) {
                    item.entry("apiVersion").or_insert_with(|| api_version.clone().into());
                    item.entry("kind").or_insert_with(|| item_kind.into());
                }
                self.add(file, document, &[items, &[i]].concat(), item, list_depth + 1);
            }
            return;
        }
        let Some((expected, _, keeper)) = KINDS.iter().find(|(a, k, _)| *k == kind && group(a) == group(&api_version))
        else {
            let key = if group(&api_version).is_empty() { kind } else { format!("{kind}.{}", group(&api_version)) };
            return *self.skipped.entry(key).or_default() += 1;
        };
        let meta = |key| map.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str);
        let name = meta("name").unwrap_or("<unnamed>");
        let object = match (kind.as_str(), meta("namespace")) {
            ("Namespace" | "Node", _) => format!("{kind} {name}"),
            (_, namespace) => format!("{kind} {}/{name}", namespace.unwrap_or("default")),
        };
        if *expected != api_version {
            let message = format!("{api_version} is not supported for {kind}, expected {expected}");
            return fail(Some(object), Fault::new(Some("apiVersion"), message));
        }
        let at = items.iter().fold(format!("{file} document {document}"), |at, i| format!("{at} items[{i}]"));
        if let Err(fault) = keeper(self, Value::Object(map), at) {
            self.errors.push(fault.at(file, Some(document), items, Some(object)));
        }
    }

    fn keep<T>(&mut self, value: Value, namespaced: bool, pick: Pick<T>, at: String) -> Result<(), Fault>
    where
        T: DeserializeOwned + Metadata<Ty = ObjectMeta>,
    {
        let mut object: T = decode(value)?;
        let key = identity(T::KIND, object.metadata_mut(), namespaced)?;
        self.store(pick, key, object, at);
        Ok(())
    }

    fn keep_owner(&mut self, value: Value, at: String) -> Result<(), Fault> {
        let OwnerDoc { api_version, kind, mut metadata } = decode(value)?;
        let (key, meta) = (identity(&kind, &mut metadata, true)?, metadata);
        let (namespace, name, uid) = (key.1.clone(), key.2.clone(), meta.uid);
        let (labels, owner_references) = (meta.labels.unwrap_or_default(), meta.owner_references.unwrap_or_default());
        let owner = OwnerObject { api_version, kind, namespace, name, uid, labels, owner_references };
        self.store(|m| &mut m.owners, key, owner, at);
        Ok(())
    }

    fn store<T>(&mut self, pick: Pick<T>, key: Key, object: T, at: String) {
        let slot = match self.index.get(&key).cloned() {
            Some((previous, slot)) => {
                let (kind, namespace, name) = &key;
                let id = if namespace.is_empty() { name.clone() } else { format!("{namespace}/{name}") };
                self.warnings.push(format!("duplicate {kind} {id}: {at} replaces {previous}"));
                pick(self)[slot] = object;
                slot
            }
            None => {
                pick(self).push(object);
                pick(self).len() - 1
            }
        };
        self.index.insert(key, (at, slot));
    }
}

/// Only metadata is decoded from a controller: serde skips the rest unread, and owner resolution
/// needs nothing else.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerDoc {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

/// Applies the namespace kubectl would (`default`) and returns the duplicate-detection key.
fn identity(kind: &str, meta: &mut ObjectMeta, namespaced: bool) -> Result<Key, Fault> {
    let name = meta.name.clone().filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| Fault::new(Some("metadata.name"), "missing"))?;
    let namespace = match namespaced {
        true => meta.namespace.get_or_insert_with(|| "default".to_string()).clone(),
        false => String::new(),
    };
    Ok((kind.to_string(), namespace, name))
}

fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// k8s-openapi ignores unknown keys, and a typo such as `podSelecter` or `matchLabel` would become an
/// empty selector matching every pod, so every level of a NetworkPolicy is checked against the known
/// field names: top level, metadata's own keys, spec, ingress/egress rules, peers, ports, ipBlock and
/// label selectors. Values of free-form maps (labels, annotations, matchLabels) are not. `name` is the
/// key the object sits under (`[]` appended inside a list); type mismatches are left to serde.
fn check_policy(value: &Value, path: &str, name: &str) -> Result<(), Fault> {
    const SELECTOR: &str = "matchExpressions matchLabels";
    let map = match value {
        Value::Object(map) => map,
        Value::Array(items) => {
            let mut items = items.iter().enumerate();
            return items.try_for_each(|(i, child)| check_policy(child, &format!("{path}[{i}]"), &format!("{name}[]")));
        }
        _ => return Ok(()),
    };
    let known = match (path, name) {
        ("", "") => "apiVersion kind metadata spec",
        ("metadata", _) => {
            "annotations creationTimestamp deletionGracePeriodSeconds deletionTimestamp finalizers generateName \
             generation labels managedFields name namespace ownerReferences resourceVersion selfLink uid"
        }
        ("spec", _) => "egress ingress podSelector policyTypes",
        (_, "ingress[]") => "from ports",
        (_, "egress[]") => "ports to",
        (_, "from[]" | "to[]") => "ipBlock namespaceSelector podSelector",
        (_, "ports[]") => "endPort port protocol",
        (_, "ipBlock") => "cidr except",
        (_, "podSelector" | "namespaceSelector") => SELECTOR,
        (_, "matchExpressions[]") => "key operator values",
        _ => return Ok(()),
    };
    map.iter().try_for_each(|(key, child)| {
        let field = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match known.split_whitespace().any(|k| k == key) {
            true => check_policy(child, &field, key),
            false => {
                Err(Fault::new(Some(&*field), format!("unknown field, expected one of: {}", known.replace(' ', ", "))))
            }
        }
    })
}

/// Deserializes strictly and names the field on failure. serde_json's errors from a Value carry no path,
/// so it is found by removing one child at a time: the first child whose removal changes the error
/// holds it. An error inside a child surfaces while the map is visited, before the parent's own
/// missing-field check, so removing an unrelated required sibling never changes the error.
fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Fault> {
    let first = match T::deserialize(&value) {
        Ok(object) => return Ok(object),
        Err(e) => e.to_string(),
    };
    // The JSON pointer addresses the node for removal; `field` is the same path as a person writes it.
    let (mut pointer, mut field, mut probes) = (String::new(), String::new(), 0);
    'descend: while let Some(node) = value.pointer(&pointer) {
        // (pointer token, map key): the key is None for a list element.
        let children: Vec<(String, Option<String>)> = match node {
            Value::Object(map) => {
                map.keys().map(|k| (k.replace('~', "~0").replace('/', "~1"), Some(k.clone()))).collect()
            }
            Value::Array(items) => (0..items.len()).map(|i| (i.to_string(), None)).collect(),
            _ => Vec::new(),
        };
        for (token, key) in children.into_iter().take(MAX_PROBES.saturating_sub(probes)) {
            probes += 1;
            let mut trial = value.clone();
            match (trial.pointer_mut(&pointer), &key) {
                (Some(Value::Object(map)), Some(key)) => drop(map.remove(key)),
                (Some(Value::Array(items)), None) => drop(items.remove(token.parse().unwrap_or_default())),
                _ => continue,
            }
            if T::deserialize(&trial).map_or_else(|e| e.to_string() != first, |_| true) {
                pointer += &format!("/{token}");
                field += &match key {
                    Some(key) if field.is_empty() => key,
                    Some(key) => format!(".{key}"),
                    None => format!("[{token}]"),
                };
                continue 'descend;
            }
        }
        break;
    }
    // Messages from a Value end without a position, but strip one in case a deserializer adds it.
    let message = first.rsplit_once(" at line ").filter(|(_, at)| at.contains(" column ")).map_or(&*first, |(m, _)| m);
    for (prefix, said) in [("missing field `", "missing"), ("unknown field `", "unknown field")] {
        if let Some(name) = message.strip_prefix(prefix).and_then(|rest| rest.split('`').next()) {
            let field = if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
            return Err(Fault::new(Some(&*field), said));
        }
    }
    Err(Fault { field: (!field.is_empty()).then_some(field), message: message.to_string() })
}
