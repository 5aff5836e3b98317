//! The expression sandbox: tenants' jq runs in worker processes
//! (`tether expr-worker`, the same binary), never in the controller.
//!
//! jq is Turing-complete: `last(range(1e12))` never ends, `"x" * 1e12`
//! asks for a terabyte, `reduce range(1e5) as $i (0; [.])` nests deeper than
//! any stack. No check of the source can rule these out, and none of them
//! can be interrupted inside the evaluator. A worker process can: it has its
//! own address-space limit (an allocation past it aborts the worker, not the
//! controller), evaluates on a thread of its own while its main thread
//! keeps the deadline (past it the worker answers "stopped" and exits), and
//! a stack overflow ends only the worker. The controller notices the worker
//! is gone and starts another on the next evaluation.
//!
//! The caller waits on a pipe; on a multi-threaded tokio runtime it does so
//! through `block_in_place`, so the runtime's other tasks move to another
//! thread while it waits. The protocol is one JSON line each way.
//!
//! Each waiting caller holds a thread. Async callers therefore first wait
//! for a **turn** ([`turn`], through [`super::in_turn`]): there are as many
//! turns as workers, and waiting for one costs a task, not a thread, so 64
//! reconciles that each evaluate an expression keep two threads waiting on
//! the workers, not 64.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why an evaluation produced no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The expression itself failed (`error`, a type error, ...).
    Eval(String),
    /// A limit of the sandbox stopped it: time, memory, nesting, size.
    Limit(String),
}

/// The limits of every evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time one evaluation may take.
    pub timeout: Duration,
    /// Address space of one worker process, in bytes.
    pub memory_bytes: u64,
    /// Worker processes (evaluations at once).
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            memory_bytes: 256 * 1024 * 1024,
            workers: 2,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Request {
    program: String,
    vars: Vec<String>,
    input: Value,
    values: Vec<Value>,
}

#[derive(Serialize, Deserialize)]
enum Response {
    Ok(Value),
    Failed(Failure),
}

/// A pool of worker processes.
pub struct Sandbox {
    exe: PathBuf,
    limits: Limits,
    workers: Vec<Mutex<Option<Worker>>>,
    next: AtomicUsize,
    /// One turn per worker (see [`turn`]).
    turns: tokio::sync::Semaphore,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Makes every evaluation of this process go through workers started from
/// `exe` (the `tether` binary). The first call wins.
pub fn install(exe: PathBuf, limits: Limits) {
    let workers: Vec<_> = (0..limits.workers.max(1)).map(|_| Mutex::new(None)).collect();
    let turns = tokio::sync::Semaphore::new(workers.len());
    let _ = SANDBOX.set(Sandbox {
        exe,
        limits,
        workers,
        next: AtomicUsize::new(0),
        turns,
    });
}

/// Waits, without holding a thread, until a worker is free for this task's
/// evaluations; the turn lasts as long as the permit. `None` when no
/// sandbox is installed (evaluation in-process does not wait).
pub async fn turn() -> Option<tokio::sync::SemaphorePermit<'static>> {
    SANDBOX.get()?.turns.acquire().await.ok()
}

/// Evaluates in the installed sandbox; `None` when none is installed (unit
/// tests and library use evaluate in-process).
pub(super) fn evaluate(
    program: &str,
    vars: &[String],
    input: &Value,
    values: &[&Value],
) -> Option<Result<Value, Failure>> {
    let sandbox = SANDBOX.get()?;
    let request = Request {
        program: program.to_owned(),
        vars: vars.to_vec(),
        input: input.clone(),
        values: values.iter().map(|v| (*v).clone()).collect(),
    };
    let line = match serde_json::to_string(&request) {
        Ok(line) => line,
        Err(e) => return Some(Err(Failure::Eval(format!("the input is not JSON: {e}")))),
    };
    let on_multi_thread_runtime = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    Some(if on_multi_thread_runtime {
        tokio::task::block_in_place(|| sandbox.roundtrip(&line))
    } else {
        sandbox.roundtrip(&line)
    })
}

impl Sandbox {
    fn roundtrip(&self, line: &str) -> Result<Value, Failure> {
        let slot = self.slot();
        let mut guard = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(
                self.spawn()
                    .map_err(|e| Failure::Limit(format!("the expression sandbox could not start a worker: {e}")))?,
            );
        }
        let Some(worker) = guard.as_mut() else {
            return Err(Failure::Limit("the expression sandbox has no worker".into()));
        };
        let answer = worker.ask(line);
        match answer {
            Ok(Some(response)) => match serde_json::from_str::<Response>(&response) {
                Ok(Response::Ok(value)) => Ok(value),
                Ok(Response::Failed(failure)) => {
                    if matches!(failure, Failure::Limit(_)) {
                        // The worker exits after a deadline: start afresh.
                        *guard = None;
                    }
                    Err(failure)
                }
                Err(e) => {
                    *guard = None;
                    Err(Failure::Limit(format!("the expression sandbox answered garbage: {e}")))
                }
            },
            Ok(None) | Err(_) => {
                *guard = None;
                Err(Failure::Limit(format!(
                    "the evaluation ended its worker: it needed more than {} MiB of memory or nested too deep",
                    self.limits.memory_bytes / (1024 * 1024)
                )))
            }
        }
    }

    /// A free worker slot if there is one, else the next in turn.
    fn slot(&self) -> &Mutex<Option<Worker>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        for k in 0..n {
            let slot = &self.workers[(start + k) % n];
            if slot.try_lock().is_ok() {
                return slot;
            }
        }
        &self.workers[start % n]
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let mut child = Command::new(&self.exe)
            .arg("expr-worker")
            .arg("--timeout-ms")
            .arg(self.limits.timeout.as_millis().to_string())
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string())
            // Nothing of the controller's environment reaches a worker.
            .env_clear()
            // One malloc arena: the address-space limit is for data, not
            // for per-thread arena reservations.
            .env("MALLOC_ARENA_MAX", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(std::io::Error::other("no pipes to the worker"));
        };
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

impl Worker {
    /// One request, one answer line; `None` when the worker is gone.
    fn ask(&mut self, line: &str) -> std::io::Result<Option<String>> {
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            return Ok(None);
        }
        Ok(Some(answer))
    }
}

/// `tether expr-worker`: evaluates requests from stdin until it closes.
/// Started by [`Sandbox`]; not for people.
pub fn worker_main(timeout: Duration, memory_bytes: u64) -> std::io::Result<()> {
    if memory_bytes > 0 {
        rlimit::setrlimit(rlimit::Resource::AS, memory_bytes, memory_bytes)?;
    }
    let (requests, inbox) = mpsc::channel::<Request>();
    let (answers, outbox) = mpsc::channel::<Response>();
    std::thread::Builder::new()
        .name("expr-eval".into())
        .stack_size(16 * 1024 * 1024)
        .spawn(move || {
            let mut compiled = Compiled::default();
            for request in inbox {
                let response = match compiled.run(&request) {
                    Ok(value) => Response::Ok(value),
                    Err(failure) => Response::Failed(failure),
                };
                if answers.send(response).is_err() {
                    return;
                }
            }
        })?;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Failed(Failure::Eval(format!("unreadable request: {e}"))),
            Ok(request) => {
                if requests.send(request).is_err() {
                    return Ok(());
                }
                match outbox.recv_timeout(timeout) {
                    Ok(response) => response,
                    Err(stop) => {
                        let why = match stop {
                            mpsc::RecvTimeoutError::Timeout => {
                                format!("the evaluation took longer than {} ms", timeout.as_millis())
                            }
                            mpsc::RecvTimeoutError::Disconnected => "the evaluator failed on this input".to_owned(),
                        };
                        let stopped = Response::Failed(Failure::Limit(why));
                        write_line(&mut stdout, &stopped)?;
                        // The evaluating thread cannot be interrupted: end
                        // the process; the controller starts another.
                        std::process::exit(0);
                    }
                }
            }
        };
        write_line(&mut stdout, &response)?;
    }
    Ok(())
}

fn write_line(out: &mut std::io::Stdout, response: &Response) -> std::io::Result<()> {
    let text = serde_json::to_string(response).map_err(std::io::Error::other)?;
    let mut out = out.lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The worker's compiled programs, by source and variables.
#[derive(Default)]
struct Compiled {
    filters: std::collections::HashMap<(String, Vec<String>), super::Filter>,
}

impl Compiled {
    const MAX_PROGRAMS: usize = 512;

    fn run(&mut self, request: &Request) -> Result<Value, Failure> {
        let key = (request.program.clone(), request.vars.clone());
        if !self.filters.contains_key(&key) {
            if self.filters.len() >= Self::MAX_PROGRAMS {
                self.filters.clear();
            }
            let filter = super::compile_in_place(&request.program, &request.vars).map_err(Failure::Eval)?;
            self.filters.insert(key.clone(), filter);
        }
        let Some(filter) = self.filters.get(&key) else {
            return Err(Failure::Eval("the program was not compiled".into()));
        };
        let values: Vec<&Value> = request.values.iter().collect();
        super::run_filter(filter, &request.input, &values)
    }
}
