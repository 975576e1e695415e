//! Check records: the one type `check` writes to `records.jsonl` and `report` reads back, its
//! schema version, the writer several processes can share and the reader that reads every
//! line it can and names each one it cannot (docs/concepts.md, "Records").
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use crate::harness::compare::ScenarioResult;
use crate::harness::suite::Scenario;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record schema: one JSON object per line of `records.jsonl`. Schema 1 (single `*.json`
/// files, before classes) and 2 (no `class` either) are read through the same type: their
/// class is the class of the recorded fingerprint ([`parse`]).
pub const RECORD_SCHEMA: u32 = 3;
/// The oldest schema [`parse`] reads.
pub const OLDEST_SCHEMA: u32 = 1;

/// One JSON record per scenario run: the result (with the run's class and the class it was
/// compared with), the scenario as run and the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    #[serde(flatten)]
    pub result: ScenarioResult,
    pub spec: Scenario,
    pub environment: Option<Fingerprint>,
    /// The output array as .npy, relative to the records folder (`check --save-outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<String>,
    /// The run (one writer) that wrote the record: its start and end lines carry the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// A run's start or end line in `records.jsonl`, between the records of several writers: a run
/// whose start has no end was cut short (killed, out of disk), whatever its records say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMark {
    pub schema: u32,
    /// `run-start` or `run-end`.
    pub event: String,
    /// The writer's id: process id and start time.
    pub run: String,
    /// On the start line, how many scenarios the run will record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<usize>,
}

/// The start and end events of [`RunMark`].
pub const RUN_START: &str = "run-start";
pub const RUN_END: &str = "run-end";

impl Record {
    pub fn new(result: &ScenarioResult, spec: &Scenario, env: Option<&Fingerprint>) -> Self {
        Record {
            schema: RECORD_SCHEMA,
            result: result.clone(),
            spec: spec.clone(),
            environment: env.cloned(),
            array: None,
            run: None,
        }
    }

    /// The record as one line of `records.jsonl`, newline included.
    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a record serialises");
        line.push('\n');
        line
    }
}

/// Reads one record (a line of `records.jsonl`, or a whole schema-1 `*.json` file). `Err`
/// says why it is not one: not JSON, a schema this reprodiff does not read, or which field
/// does not fit. A record of schema 1 or 2 has no `class`: it gets the class of its recorded
/// fingerprint on its scenario's device, which is what those versions compared by.
pub fn parse(text: &str) -> std::result::Result<Record, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not JSON: {e} (line {}, column {})", e.line(), e.column()))?;
    let schema = match v["schema"].as_u64() {
        Some(s) if (u64::from(OLDEST_SCHEMA)..=u64::from(RECORD_SCHEMA)).contains(&s) => s,
        other => {
            return Err(format!(
                "record schema {} is not one this reprodiff reads ({OLDEST_SCHEMA} to \
                 {RECORD_SCHEMA})",
                other.map_or("missing".into(), |s| s.to_string())
            ))
        }
    };
    let mut record: Record = serde_json::from_value(v)
        .map_err(|e| format!("not a check record of schema {schema}: {e}"))?;
    if record.result.class.is_none() {
        if let Some(fp) = &record.environment {
            record.result.class = Some(fp.class(record.spec.device).to_string());
        }
    }
    Ok(record)
}

/// Every record under a folder, with where it was read, and what could not be read.
#[derive(Debug, Default)]
pub struct Read {
    /// (file, record), in file order and line order.
    pub records: Vec<(PathBuf, Record)>,
    /// "file line N: why" for each line or file that is not a record.
    pub unreadable: Vec<String>,
    /// "file: run ID ..." for each run that started and never ended.
    pub incomplete: Vec<String>,
}

/// Reads every record under `dir`: the lines of `*.jsonl` files (what `check` writes) and
/// single-record `*.json` files (schema 1). Bad bytes on one line (an interrupted or foreign
/// write) cost that line only; an unreadable file costs that file.
pub fn read(dir: &Path) -> Result<Read> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut out = Read::default();
    for f in files {
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) => {
                out.unreadable.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        if f.extension().is_some_and(|x| x == "jsonl") {
            read_lines(&f, &bytes, &mut out);
            continue;
        }
        match std::str::from_utf8(&bytes)
            .map_err(|e| format!("not UTF-8 ({e})"))
            .and_then(parse)
        {
            Ok(r) => out.records.push((f.clone(), r)),
            Err(why) => out.unreadable.push(format!("{}: {why}", f.display())),
        }
    }
    Ok(out)
}

/// The records and run marks of one `records.jsonl`; runs that started and never ended go to
/// `out.incomplete`.
fn read_lines(f: &Path, bytes: &[u8], out: &mut Read) {
    // run id -> (planned, records seen, ended)
    let mut runs: Vec<(String, Option<usize>, usize, bool)> = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let where_ = || format!("{} line {}", f.display(), i + 1);
        let l = match std::str::from_utf8(line) {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => l,
            Err(e) => {
                out.unreadable
                    .push(format!("{}: not UTF-8 ({e})", where_()));
                continue;
            }
        };
        if let Ok(mark) = serde_json::from_str::<RunMark>(l) {
            match runs.iter_mut().find(|r| r.0 == mark.run) {
                Some(r) => r.3 |= mark.event == RUN_END,
                None => runs.push((mark.run, mark.planned, 0, mark.event == RUN_END)),
            }
            continue;
        }
        match parse(l) {
            Ok(r) => {
                if let Some(run) = runs.iter_mut().find(|x| Some(&x.0) == r.run.as_ref()) {
                    run.2 += 1;
                }
                out.records.push((f.to_path_buf(), r));
            }
            Err(why) => out.unreadable.push(format!("{}: {why}", where_())),
        }
    }
    for (id, planned, seen, ended) in runs {
        if !ended {
            out.incomplete.push(format!(
                "{}: run {id} wrote {seen} of {} record(s) and never ended (killed, or the \
                 disk filled): its scenarios are not all here",
                f.display(),
                planned.map_or("its".into(), |n| n.to_string())
            ));
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json" || x == "jsonl") {
            out.push(p);
        }
    }
    Ok(())
}

/// Writes `<out>/records.jsonl`, one record per scenario run. Several processes may share the
/// folder: every writer holds a shared lock on the file for its lifetime, and one that finds no
/// other writer starts the file afresh (a new run replaces the records of a finished one) while
/// one that finds another appends beside it. Each record is one `write` of the whole line to a
/// file opened for appending, so lines of concurrent writers never interleave (Linux serialises
/// writes to one regular file); an interrupted run leaves every finished record readable, and
/// its start line without an end line says it was cut short. The file is never opened through
/// a symlink.
pub struct RecordWriter {
    path: PathBuf,
    file: std::fs::File,
    run: String,
    /// Also write each output array to `outputs/<suite>/<scenario>.<sha12>.npy` beside the
    /// records (named by content, so concurrent writers never overwrite each other's).
    pub save_outputs: bool,
}

impl RecordWriter {
    /// Opens `<out>/records.jsonl` (afresh, or for appending beside another running writer)
    /// and writes this run's start line, which says it will record `planned` scenarios.
    pub fn create(out: &Path, planned: usize) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if out.exists() && !out.is_dir() {
            let expected = "is a file, not a folder";
            return Err(Error::flag("out", out.display(), expected));
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let path = out.join("records.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::InvalidArgument(format!(
                    "{}: is a symbolic link; records are never written through one",
                    path.display()
                )),
                _ => Error::io(&path, e),
            })?;
        if try_lock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
        }
        if !try_lock(&file, libc::LOCK_SH) {
            return Err(Error::io(&path, std::io::Error::last_os_error()));
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut w = RecordWriter {
            path,
            file,
            run: format!("{}-{started}", std::process::id()),
            save_outputs: false,
        };
        w.mark(RUN_START, Some(planned))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the run's end line: everything it planned was recorded.
    pub fn finish(mut self) -> Result<()> {
        self.mark(RUN_END, None)
    }

    fn mark(&mut self, event: &str, planned: Option<usize>) -> Result<()> {
        let mark = RunMark {
            schema: RECORD_SCHEMA,
            event: event.into(),
            run: self.run.clone(),
            planned,
        };
        let mut line = serde_json::to_string(&mark).expect("a mark serialises");
        line.push('\n');
        self.write_line(&line)
    }

    /// One whole line in one `write`. When it fails part-way (the disk is full) and no other
    /// writer shares the file, the cut-off line is this writer's own and is cut back off.
    fn write_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let Err(e) = self.file.write_all(line.as_bytes()) else {
            return Ok(());
        };
        if try_lock(&self.file, libc::LOCK_EX | libc::LOCK_NB) {
            if let Ok(bytes) = std::fs::read(&self.path) {
                let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let _ = self.file.set_len(whole as u64);
            }
            try_lock(&self.file, libc::LOCK_SH);
        }
        Err(Error::io(&self.path, e))
    }

    pub fn append(
        &mut self,
        scenario: &Scenario,
        result: &ScenarioResult,
        env: Option<&Fingerprint>,
        output: Option<&tch::Tensor>,
    ) -> Result<()> {
        let array = match output {
            Some(t) if self.save_outputs => Some(self.save_output(result, t)?),
            _ => None,
        };
        let record = Record {
            array,
            run: Some(self.run.clone()),
            ..Record::new(result, scenario, env)
        };
        self.write_line(&record.line())
    }

    /// Writes `outputs/<suite>/<scenario>.<sha12>.npy` (the scenario name checked to stay
    /// inside the folder); a file the write left cut off is removed.
    fn save_output(&self, result: &ScenarioResult, t: &tch::Tensor) -> Result<String> {
        let sha = result.output.as_ref().map_or("", |o| &o.sha256[..12]);
        let rel = format!("outputs/{}/{}.{sha}.npy", result.suite, result.scenario);
        let dir = self.path.parent().expect("records.jsonl has a folder");
        let path = crate::paths::join(dir, &rel, "scenario name")?;
        let parent = path.parent().expect("an outputs file has a folder");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        if path.is_symlink() {
            return Err(Error::InvalidArgument(format!(
                "{}: is a symbolic link; outputs are never written through one",
                path.display()
            )));
        }
        if let Err(e) = t.write_npy(&path) {
            let _ = std::fs::remove_file(&path);
            return Err(Error::writing(&path, e));
        }
        Ok(rel)
    }
}

/// flock on `file`; true when it was granted.
fn try_lock(file: &std::fs::File, op: libc::c_int) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor `file` owns; released when it closes.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::compare::Verdict;
    use crate::harness::suite::Suite;

    /// Writers in several threads, each with its own writer on one folder, lose no record and
    /// never interleave a line.
    #[test]
    fn concurrent_writers_keep_every_record_whole() {
        let dir = tempfile::tempdir().unwrap();
        let text = "schema = 1\nname = \"t\"\n[[scenario]]\nname = \"s\"\nmetrics = [\"bits\"]\n\
                    run = { kind = \"random\", op = \"randn\", shape = [4], generator = { \
                    type = \"single\", seed = 0 } }\n";
        let scenario = Suite::parse(text, Path::new("t.toml"))
            .unwrap()
            .scenarios
            .remove(0);
        let first = RecordWriter::create(dir.path(), 0).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (scenario, out) = (&scenario, dir.path());
                scope.spawn(move || {
                    let mut w = RecordWriter::create(out, 200).unwrap();
                    for i in 0..200 {
                        // A long note, so that a record is far larger than one page.
                        let why = format!("thread {t} record {i} {}", "x".repeat(9000));
                        let r = ScenarioResult::skipped("t", "s", Verdict::NotRun, &why);
                        w.append(scenario, &r, None, None).unwrap();
                    }
                    w.finish().unwrap();
                });
            }
        });
        first.finish().unwrap();
        let read = read(dir.path()).unwrap();
        assert!(read.unreadable.is_empty(), "{:?}", read.unreadable);
        assert!(read.incomplete.is_empty(), "{:?}", read.incomplete);
        assert_eq!(read.records.len(), 800);
    }

    /// Every check record committed under fixtures/records (schemas 1 to 3, from four hosts
    /// and two library versions) reads through the one record type, and reads as what it
    /// says: a class for every record that ran, and the verdict it was written with.
    #[test]
    fn every_committed_record_reads_through_the_record_type() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
        let read = read(&root).unwrap();
        // Oracle results and env.json are not check records; everything else must read.
        let unreadable: Vec<&String> = read
            .unreadable
            .iter()
            .filter(|u| !u.contains("/oracle-results/") && !u.contains("env.json"))
            .collect();
        assert!(unreadable.is_empty(), "{unreadable:#?}");
        let schemas: std::collections::BTreeSet<u32> =
            read.records.iter().map(|(_, r)| r.schema).collect();
        assert!(
            schemas.contains(&1) && schemas.contains(&RECORD_SCHEMA),
            "{schemas:?}"
        );
        let mut classes = 0;
        for (file, r) in &read.records {
            let text = std::fs::read_to_string(file).unwrap();
            let written = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .chain([serde_json::from_str(&text).ok()])
                .flatten()
                .find(|v| v["suite"] == r.result.suite && v["scenario"] == r.result.scenario)
                .expect("the record's own line");
            assert_eq!(written["verdict"], r.result.verdict.key().as_str());
            if r.result.verdict != Verdict::NotRun {
                assert!(r.result.class.is_some(), "{}: no class", file.display());
            }
            // The class a record was judged in is the one today's class rule gives its
            // fingerprint: old records still mean what they said.
            if let (Some(class), Some(fp), Some(_)) =
                (&r.result.class, &r.environment, &written["class"].as_str())
            {
                assert_eq!(
                    &fp.class(r.spec.device).to_string(),
                    class,
                    "{} {}",
                    file.display(),
                    r.result.scenario
                );
                classes += 1;
            }
        }
        assert!(
            classes > 100,
            "only {classes} records had a class to compare"
        );
    }

    #[test]
    fn a_record_of_an_unknown_schema_or_shape_is_named_not_guessed() {
        assert!(parse("{\"schema\": 99}").unwrap_err().contains("schema 99"));
        assert!(parse("{}").unwrap_err().contains("schema missing"));
        assert!(parse("{\"schema\": 3, \"suite\": 1}")
            .unwrap_err()
            .contains("not a check record of schema 3"));
        assert!(parse("{{").unwrap_err().starts_with("not JSON"));
    }

    #[test]
    fn verdict_keys_are_the_names_records_hold() {
        for v in Verdict::ALL {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(text, format!("\"{}\"", v.key()));
            assert_eq!(v.label(), v.key().replace('-', " "));
        }
    }
}
