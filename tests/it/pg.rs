//! A throwaway PostgreSQL server for the tests that need one: `initdb` into
//! a temporary folder, started on a free loopback port with `pg_ctl` (as
//! the `postgres` user when the tests run as root, since PostgreSQL refuses
//! to run as root), stopped when dropped. The binaries come from the
//! distribution's packages (`/usr/lib/postgresql/<version>/bin`) or `PATH`.
//!
//! Where PostgreSQL is not installed, [`Cluster::start`] says the test was
//! not run and returns `None`, except in CI (`CI` set), where a missing
//! PostgreSQL fails the test: CI must run them.
//!
//! [`Cluster::start_with`] changes the cluster before its server first
//! starts ([`Setup`]): files in its data folder (a certificate and its key),
//! settings, `pg_hba.conf`, the addresses it listens on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// A running throwaway PostgreSQL server.
pub struct Cluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// `listen_addresses`.
    listen: String,
}

/// What a test changes in a cluster before its server first starts.
#[derive(Debug, Default)]
pub struct Setup {
    /// Files written into the data folder, owned by the server's user:
    /// name, contents, mode (a key must be `0o600`). Settings name them
    /// relative to the data folder.
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Lines added to `postgresql.conf` (`ssl = on`, …).
    pub settings: Vec<String>,
    /// Replaces `pg_hba.conf` (who may connect, and how).
    pub hba: Option<String>,
    /// `listen_addresses`, when not only `127.0.0.1`.
    pub listen: Option<String>,
}

/// The folder holding `initdb` and `pg_ctl`: the newest version under
/// `/usr/lib/postgresql`, or the one on `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

impl Cluster {
    /// Starts a server for `test`, or says why it cannot (see the module).
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, Setup::default())
    }

    /// Starts a server for `test` changed as `setup` says, or says why it
    /// cannot (see the module).
    pub fn start_with(test: &str, setup: Setup) -> Option<Self> {
        let Some(bin) = bin_dir() else {
            super::support::not_run(
                test,
                "PostgreSQL's initdb and pg_ctl were not found (install the distribution's postgresql package)",
            );
            return None;
        };
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::tempdir().expect("temp dir");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster folder failed");
        }
        let cluster = Self {
            dir,
            bin,
            port: super::support::free_port(),
            as_postgres,
            listen: setup.listen.unwrap_or_else(|| "127.0.0.1".to_owned()),
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.apply(setup.files, &setup.settings, setup.hba);
        cluster.start_server();
        Some(cluster)
    }

    /// Writes a [`Setup`]'s files, settings and `pg_hba.conf` into the data
    /// folder, owned by the server's user.
    fn apply(&self, files: Vec<(String, Vec<u8>, u32)>, settings: &[String], hba: Option<String>) {
        let data = self.data();
        let postgres = self
            .as_postgres
            .then(|| nix::unistd::User::from_name("postgres").ok().flatten())
            .flatten();
        let write = |name: &str, contents: &[u8], mode: u32| {
            let path = data.join(name);
            std::fs::write(&path, contents).expect("write into the data folder");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("set the mode");
            if let Some(user) = &postgres {
                std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .expect("chown to postgres");
            }
        };
        for (name, contents, mode) in files {
            write(&name, &contents, mode);
        }
        if !settings.is_empty() {
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
            for line in settings {
                text.push_str(line);
                text.push('\n');
            }
            write("postgresql.conf", text.as_bytes(), 0o600);
        }
        if let Some(hba) = hba {
            write("pg_hba.conf", hba.as_bytes(), 0o600);
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The cluster's folder, where its Unix socket is.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The port it listens on (TCP, and its socket's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `postgres` database through the Unix socket, as `key=value`.
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir().display(),
            self.port
        )
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (or starts again) the server and waits until it accepts
    /// connections.
    pub fn start_server(&self) {
        let data = self.data();
        let socket_dir = self.dir.path().to_str().expect("utf-8").to_owned();
        let options = format!(
            "-p {} -k {socket_dir} -c listen_addresses={} -c fsync=off -c max_connections=200",
            self.port, self.listen
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-o",
                &options,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once (as a crash or an outage would).
    pub fn stop_server(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        self.url_on(self.port)
    }

    /// The URL of the server's `postgres` database through another port
    /// (a proxy in front of the server).
    pub fn url_on(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
