//! A real etcd cluster for tests: `etcd` (Debian's `etcd-server`, 3.4) run
//! as N members on free 127.0.0.1 ports, each with a temporary data
//! directory. Members are killed when the cluster is dropped, and by the
//! kernel if the test process dies (PR_SET_PDEATHSIG, from a thread that
//! lives as long as the process).

use promptreg::store::etcd::{pb, EtcdConfig};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
}

fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure the `etcd` binary is here: on a fresh machine, installs
/// Debian's `etcd-server` (as root, or through `sudo -n`), once per process,
/// as `.ci/run` and `bench/run.sh` do.
pub fn ensure_installed() {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        if installed() {
            return;
        }
        eprintln!("etcd is missing: installing Debian's etcd-server");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let apt = |args: &[&str]| {
            let mut command = if root {
                Command::new("apt-get")
            } else {
                let mut sudo = Command::new("sudo");
                sudo.args(["-n", "apt-get"]);
                sudo
            };
            command
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = apt(&["update", "-qq"]);
        let _ = apt(&["install", "-y", "-qq", "etcd-server"]);
    });
    assert!(
        installed(),
        "the etcd binary is missing and could not be installed: apt-get install etcd-server"
    );
}

/// A command to spawn and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns from one thread that never ends, so that PR_SET_PDEATHSIG fires
/// only when the whole test process does.
fn spawn(mut command: Command) -> Child {
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            for (mut command, reply) in rx {
                // SAFETY: prctl is async-signal-safe; nothing else runs
                // between fork and exec.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(command.spawn());
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    command.stdin(Stdio::null());
    spawner
        .lock()
        .unwrap()
        .send((command, reply))
        .expect("spawner thread");
    answer
        .recv()
        .expect("spawner answers")
        .expect("etcd starts")
}

impl EtcdCluster {
    /// Starts `size` members and waits until they have a leader.
    pub fn start(size: usize) -> EtcdCluster {
        ensure_installed();
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: super::metrics::free_port(),
                peer_port: super::metrics::free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            dir,
            initial_cluster,
        };
        for i in 0..size {
            cluster.launch(i, "new");
        }
        cluster.wait_for_leader();
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn launch(&mut self, i: usize, state: &str) {
        let data_dir = self.data_dir(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .expect("etcd log file");
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new("etcd");
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "promptreg-test"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = spawn(command);
        self.members[i].child = Some(child);
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A store configuration on this cluster under `prefix`.
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            prefix: prefix.to_string(),
            tls: None,
            timeout: Duration::from_secs(3),
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.launch(i, "existing");
    }

    /// The index of the member that leads now, once there is one every
    /// running member agrees on.
    pub fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster elected no leader in {PATIENCE:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leader(&self) -> Option<usize> {
        // Its own thread: callers may be inside a tokio runtime.
        std::thread::scope(|scope| scope.spawn(|| self.leader_now()).join().ok()?)
    }

    fn leader_now(&self) -> Option<usize> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            let url = format!("http://127.0.0.1:{}", member.client_port);
            let status = runtime.block_on(async {
                let mut client = tokio::time::timeout(
                    Duration::from_secs(2),
                    pb::maintenance_client::MaintenanceClient::connect(url),
                )
                .await
                .ok()?
                .ok()?;
                tokio::time::timeout(Duration::from_secs(2), client.status(pb::StatusRequest {}))
                    .await
                    .ok()?
                    .ok()
            })?;
            let status = status.into_inner();
            ids.push((i, status.header?.member_id));
            leaders.push(status.leader);
        }
        let leader = *leaders.first()?;
        if leader == 0 || leaders.iter().any(|l| *l != leader) {
            return None;
        }
        ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Member processes and the directory of the shared cluster, for the exit
/// hook (a static is never dropped).
static SHARED_LEFTOVERS: std::sync::Mutex<(Vec<u32>, Option<PathBuf>)> =
    std::sync::Mutex::new((Vec::new(), None));

extern "C" fn remove_shared_cluster() {
    let Ok(leftovers) = SHARED_LEFTOVERS.lock() else {
        return;
    };
    for pid in &leftovers.0 {
        // SAFETY: kill has no memory effects; the pid is a child of ours.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    if let Some(dir) = &leftovers.1 {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One three-member cluster for every test of this process that asks
/// for it (each server uses its own prefix: [`unique_prefix`]).
pub fn shared() -> &'static EtcdCluster {
    static SHARED: std::sync::OnceLock<EtcdCluster> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = EtcdCluster::start(3);
        let mut leftovers = SHARED_LEFTOVERS.lock().unwrap();
        leftovers.0 = cluster
            .members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect();
        leftovers.1 = Some(cluster.dir.path().to_path_buf());
        // SAFETY: registers a plain function with no arguments.
        unsafe {
            libc::atexit(remove_shared_cluster);
        }
        cluster
    })
}

/// A key prefix no other server of this process uses.
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("/test-{}-{n}/", std::process::id())
}

/// Whether this test run asks for every test server on etcd
/// (`PROMPTREG_TEST_STORE=etcd`).
pub fn requested() -> bool {
    std::env::var("PROMPTREG_TEST_STORE").is_ok_and(|v| v == "etcd")
}
