//! The driver's voice: story lines to stdout and the transcript, and the checks behind PASS/FAIL.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

static TRANSCRIPT: Mutex<Option<File>> = Mutex::new(None);

/// Sends every later [`say`] line to `file` as well as stdout.
pub fn set_transcript(file: File) {
    *TRANSCRIPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
}

/// Prints one line of the story (stdout and transcript).
pub fn say(line: impl AsRef<str>) {
    let line = line.as_ref();
    println!("{line}");
    if let Some(f) = TRANSCRIPT.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = writeln!(f, "{line}");
    }
}

/// `say!("...", args)`: formatted [`say`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::report::say(format!($($arg)*)) };
}

/// One checked claim.
#[derive(Debug, Clone)]
pub struct Check {
    /// Scenario name.
    pub scenario: String,
    /// What was claimed.
    pub claim: String,
    /// Whether it held.
    pub passed: bool,
}

/// Every check made in a run.
#[derive(Debug, Default)]
pub struct Report {
    checks: Vec<Check>,
    scenario: String,
}

impl Report {
    /// Starts a scenario section.
    pub fn scenario(&mut self, name: &str, story: &str) {
        self.scenario = name.to_string();
        say("");
        say(format!("══ {name} ══"));
        for line in story.lines() {
            say(format!("   {}", line.trim()));
        }
    }

    /// Records a claim; prints `PASS`/`FAIL` with what was expected and what was seen.
    pub fn check(&mut self, passed: bool, claim: impl Into<String>, seen: impl AsRef<str>) -> bool {
        let claim = claim.into();
        let mark = if passed { "PASS" } else { "FAIL" };
        say(format!("   [{mark}] {claim}"));
        let seen = seen.as_ref();
        if !seen.is_empty() {
            say(format!("          saw: {seen}"));
        }
        self.checks.push(Check { scenario: self.scenario.clone(), claim, passed });
        passed
    }

    /// Number of failed checks.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }

    /// Prints the summary table of every scenario and check.
    pub fn summary(&self) {
        say("");
        say("══ Summary ══");
        let width = self.checks.iter().map(|c| c.scenario.chars().count()).max().unwrap_or(8);
        for c in &self.checks {
            let mark = if c.passed { "PASS" } else { "FAIL" };
            say(format!("  {mark}  {:<width$}  {}", c.scenario, c.claim));
        }
        let failed = self.failures();
        say(format!("  {} checks, {} passed, {} failed", self.checks.len(), self.checks.len() - failed, failed));
    }
}
