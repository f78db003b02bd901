//! The russh server: listening, connection limits, public-key
//! authentication against the core, and channel dispatch. A session channel
//! may run one `exec` (a Draupnir command, or the `scp -t` sink), the
//! `sftp` subsystem, or a shell (a bare `ssh draupnir`: the command list,
//! exit status 0); a PTY request is accepted (the shell's list then goes
//! out with CRLF line ends, see [`super::terminal`]; a command's output
//! stays byte for byte); forwarding, agent, X11 and env requests are
//! refused. Each connection runs in its own task, so one that panics or
//! misbehaves never takes the daemon down.
//!
//! Unauthenticated connections are bounded three ways: `auth_timeout` from
//! accept, whatever the client sends (enforced on the socket itself, see
//! [`AuthDeadline`]), `max_unauthenticated` in all and
//! `max_unauthenticated_per_address` from one address.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::HashAlg;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, SshId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::commands;
use super::session::{Session as CommandSession, SessionSlot, Sessions};
use super::socket::{AuthDeadline, QuickAck};
use super::terminal::Crlf;
use super::{hostkey, scp, sftp, SshError};
use crate::config::SshConfig;
use crate::core::{Actor, Service};

/// Read buffer in front of each connection's socket.
const SOCKET_READ_BUF: usize = 256 * 1024;

/// After the authentication deadline, the time left for the polite
/// "authentication timed out" disconnect before the socket itself fails.
const AUTH_GRACE: Duration = Duration::from_secs(2);

/// Channels a connection may hold open only to be told that its user has
/// too many sessions.
const MAX_REFUSED_CHANNELS: usize = 2;

/// A running SSH server. Dropping it stops accepting connections.
pub struct SshServer {
    local_addr: SocketAddr,
    fingerprint: String,
    stop: watch::Sender<bool>,
}

impl SshServer {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The host key's `SHA256:…` fingerprint.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Stop accepting connections. Connections already open keep running
    /// until their clients leave (an upload in flight is not cut).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What every connection shares.
struct Shared {
    service: Service,
    cfg: SshConfig,
    port: u16,
    unauthenticated: Arc<Semaphore>,
    /// Unauthenticated connections per client address.
    unauthenticated_from: Mutex<HashMap<IpAddr, usize>>,
    /// Most unauthenticated connections from one address.
    per_address: usize,
    /// Open session channels per user.
    sessions: Sessions,
}

/// An unauthenticated connection's place under both caps; released on
/// drop (at authentication or when the connection ends).
struct Unauthenticated {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.unauthenticated_from.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl Shared {
    /// A place for a new connection from `ip`, or `None` when either cap
    /// is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Unauthenticated> {
        let permit = self.unauthenticated.clone().try_acquire_owned().ok()?;
        let mut m = self.unauthenticated_from.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(Unauthenticated {
            _permit: permit,
            shared: self.clone(),
            ip,
        })
    }
}

/// Bind `cfg.listen_address`, load (or create) the host key and serve
/// connections in background tasks until [`SshServer::shutdown`].
pub async fn serve(service: Service, cfg: &SshConfig) -> Result<SshServer, SshError> {
    let key = hostkey::load_or_generate(&cfg.host_key_path)?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let listener = TcpListener::bind(cfg.listen_address)
        .await
        .map_err(|source| SshError::Bind {
            addr: cfg.listen_address,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| SshError::Bind {
        addr: cfg.listen_address,
        source,
    })?;
    let config = Arc::new(russh_config(cfg, key));
    let shared = Arc::new(Shared {
        service,
        cfg: cfg.clone(),
        port: local_addr.port(),
        unauthenticated: Arc::new(Semaphore::new(cfg.max_unauthenticated)),
        unauthenticated_from: Mutex::new(HashMap::new()),
        per_address: cfg.unauthenticated_per_address(),
        sessions: Sessions::new(cfg.max_sessions_per_user),
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(accept_loop(listener, config, shared, stopped));
    Ok(SshServer {
        local_addr,
        fingerprint,
        stop,
    })
}

/// True when this CPU has AES and carry-less multiply instructions
/// (AES-NI + PCLMULQDQ on x86-64, the crypto extensions on aarch64), which
/// make AES-GCM the cheapest AEAD by far.
fn aes_gcm_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The ciphers offered, AEAD only (CTR+HMAC modes are slower and more
/// negotiation surface for no client we need).
///
/// SSH picks the first cipher in the *client's* list that the server
/// offers, and OpenSSH's client lists chacha20-poly1305 first. Our order
/// therefore decides nothing; what we offer does. With AES in hardware
/// we offer only AES-GCM: uploads are the one heavy stream here, and
/// chacha20-poly1305 is paid for in software — OpenSSH's client uses its
/// own portable chacha20 and poly1305 — while AES-GCM runs on
/// AES-NI/PCLMULQDQ on both sides (OpenSSL in the client, aws-lc here).
/// On a 2-core host shared by client and server this alone took raw
/// upload throughput from 1.5× to 2.0× OpenSSH's sshd
/// (docs/bench/upload-notes.md). Every OpenSSH since 6.2 and PuTTY since 0.76
/// support aes128-gcm. Without AES hardware, chacha20-poly1305 is the
/// faster one and is offered first.
fn ciphers() -> &'static [russh::cipher::Name] {
    use russh::cipher::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
    if aes_gcm_in_hardware() {
        &[AES_128_GCM, AES_256_GCM]
    } else {
        &[CHACHA20_POLY1305, AES_128_GCM, AES_256_GCM]
    }
}

fn russh_config(cfg: &SshConfig, key: russh::keys::PrivateKey) -> russh::server::Config {
    let preferred = russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(ciphers()),
        ..Default::default()
    };
    russh::server::Config {
        server_id: SshId::Standard(
            format!("SSH-2.0-draupnir_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH probes with "none" first; do not make every login slow.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        // russh counts OpenSSH's opening "none" probe as a rejected
        // attempt: one more, so `max_auth_attempts` keys may really be tried.
        max_auth_attempts: cfg.max_auth_attempts.saturating_add(1),
        inactivity_timeout: (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout),
        // CRATES.md: a 16 MiB window and 256 KiB packets make SFTP fast;
        // an event buffer under 128 can deadlock an upload across a rekey.
        window_size: 16 << 20,
        maximum_packet_size: 256 << 10,
        event_buffer_size: 256,
        // Per-channel queue of incoming data messages: the backpressure on
        // uploads (russh stops reading the socket while it is full).
        channel_buffer_size: 64,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "ssh accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = shared.admit(crate::core::address_key(peer.ip())) else {
            tracing::warn!(%peer, "too many unauthenticated ssh connections; dropping one");
            drop(socket);
            continue;
        };
        let (config, shared) = (config.clone(), shared.clone());
        tokio::spawn(async move {
            run_connection(config, shared, socket, peer, permit).await;
        });
    }
    tracing::info!("ssh server stopped accepting connections");
}

async fn run_connection(
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    permit: Unauthenticated,
) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let authed = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + shared.cfg.auth_timeout;
    let handler = Conn {
        shared: shared.clone(),
        peer,
        actor: None,
        permit: Some(permit),
        authed: authed.clone(),
        channels: HashMap::new(),
        refused: HashMap::new(),
        sftp: HashMap::new(),
        ptys: HashSet::new(),
    };
    // russh reads each packet with two exact reads (length block, rest)
    // straight from the socket: buffer them, so a stream of upload packets
    // (OpenSSH's are mostly 32 KiB) costs one recv per 256 KiB instead of
    // two per packet.
    let socket = AuthDeadline::new(QuickAck::new(socket), deadline + AUTH_GRACE, authed.clone());
    let socket = tokio::io::BufReader::with_capacity(SOCKET_READ_BUF, socket);
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, socket, handler))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "ssh client sent no version line in time");
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);
    let outcome = tokio::select! {
        r = &mut session => Some(r),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    let outcome = match outcome {
        Some(r) => r,
        None if authed.load(Ordering::SeqCst) => session.await,
        None => {
            tracing::info!(%peer, "ssh authentication timed out");
            let _ = handle
                .disconnect(
                    Disconnect::ByApplication,
                    "authentication timed out".into(),
                    "en".into(),
                )
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
            return;
        }
    };
    match outcome {
        Ok(()) => tracing::debug!(%peer, "ssh connection closed"),
        // The transport refuses packets over 256 KiB (as OpenSSH's sshd
        // does) and cannot answer on the channel then: say so here at
        // least (a command line that long is the usual cause).
        Err(russh::Error::PacketSize(bytes)) => tracing::info!(
            %peer,
            bytes,
            "ssh connection dropped: a packet over the 256 KiB limit (a command line that long?)"
        ),
        Err(e) => tracing::debug!(%peer, error = %e, "ssh connection ended with an error"),
    }
}

/// One connection's handler.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    actor: Option<Actor>,
    /// Held until authentication succeeds (the unauthenticated caps).
    permit: Option<Unauthenticated>,
    authed: Arc<AtomicBool>,
    /// Session channels opened but not started yet.
    channels: HashMap<ChannelId, (Channel<Msg>, SessionSlot)>,
    /// Channels opened over the user's session cap, kept only to tell the
    /// client why on stderr when it asks them to run something.
    refused: HashMap<ChannelId, Channel<Msg>>,
    /// Channels running the SFTP subsystem.
    sftp: HashMap<ChannelId, sftp::Totals>,
    /// Channels that asked for a terminal (output gets CRLF line ends).
    ptys: HashSet<ChannelId>,
}

impl Conn {
    fn known_key(&self, key: &russh::keys::PublicKey) -> Option<Actor> {
        // The key's wire encoding, fingerprinted the one way the core does.
        let fp = match key.to_bytes() {
            Ok(blob) => crate::core::Fingerprint::of(&blob),
            Err(e) => {
                tracing::warn!(error = %e, "offered key cannot be encoded");
                return None;
            }
        };
        match self.shared.service.authenticate_key(&fp) {
            Ok(actor) => actor,
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed");
                None
            }
        }
    }

    fn command_session(&self, actor: Actor) -> CommandSession {
        CommandSession {
            service: self.shared.service.clone(),
            actor,
            peer: Some(self.peer.ip()),
            ssh_port: self.shared.port,
        }
    }

    /// Take a channel that is about to start, or refuse the request.
    fn start(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<Option<(Channel<Msg>, SessionSlot, Actor)>, russh::Error> {
        let Some(actor) = self.actor.clone() else {
            session.channel_failure(id)?;
            return Ok(None);
        };
        if let Some(chan) = self.refused.remove(&id) {
            session.channel_success(id)?;
            let line = format!(
                "draupnir: {} has {} sessions open already (max_sessions_per_user); \
                 close one and try again\n",
                actor.name(),
                self.shared.cfg.max_sessions_per_user
            );
            tokio::spawn(async move {
                let mut stderr = chan.make_writer_ext(Some(1));
                let _ = stderr.write_all(line.as_bytes()).await;
                let _ = stderr.flush().await;
                finish_channel(&chan, 1).await;
            });
            return Ok(None);
        }
        match self.channels.remove(&id) {
            Some((chan, slot)) => {
                session.channel_success(id)?;
                Ok(Some((chan, slot, actor)))
            }
            None => {
                // Already running something: one request per channel.
                session.channel_failure(id)?;
                Ok(None)
            }
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Ask the client to sign only with a key we know.
        Ok(if self.known_key(offer.public_key).is_some() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.known_key(key.public_key) {
            Some(actor) => {
                tracing::info!(
                    peer = %self.peer,
                    user = %actor.name(),
                    login = %user.chars().take(64).collect::<String>(),
                    fingerprint = %key.public_key.fingerprint(HashAlg::Sha256),
                    "ssh login"
                );
                self.actor = Some(actor);
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(
                    peer = %self.peer,
                    fingerprint = %key.public_key.fingerprint(HashAlg::Sha256),
                    "ssh key refused"
                );
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.authed.store(true, Ordering::SeqCst);
        self.permit = None;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(actor) = &self.actor else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let Some(slot) = self.shared.sessions.take(&self.shared.service, actor.id()) else {
            tracing::warn!(user = %actor.name(), peer = %self.peer, "too many ssh sessions");
            if self.refused.len() >= MAX_REFUSED_CHANNELS {
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
            } else {
                // Accepted only to say why on stderr (a rejected open
                // shows the client nothing but "resource shortage").
                self.refused.insert(channel.id(), channel);
                reply.accept().await;
            }
            return Ok(());
        };
        self.channels.insert(channel.id(), (channel, slot));
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.refused.remove(&channel);
        self.sftp.remove(&channel);
        self.ptys.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // CRATES.md: without an exit status at the end of an SFTP session
        // `scp` exits 1 and `ssh -s` 255.
        if let Some(totals) = self.sftp.remove(&channel) {
            // Every request was answered: the session's summary is final.
            let line = sftp::summary(&totals);
            if !line.is_empty() {
                session.extended_data(channel, 1, line.into_bytes())?;
            }
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)?;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((chan, slot, actor)) = self.start(channel, session)? else {
            return Ok(());
        };
        let argv = parse_command(data, self.shared.cfg.max_command_bytes);
        let cmd_session = self.command_session(actor);
        // A command's output stays byte for byte with a terminal too:
        // `eval "$(ssh -t draupnir env 12)"` from a terminal asks for one,
        // and a CR would end up in what it writes and exports.
        tokio::spawn(run_exec(chan, slot, cmd_session, argv, false));
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let Some((chan, slot, actor)) = self.start(channel, session)? else {
            return Ok(());
        };
        let stderr = Box::new(chan.make_writer_ext(Some(1)));
        let handler = sftp::SftpSession::new(self.command_session(actor), slot, stderr);
        self.sftp.insert(channel, handler.totals());
        sftp::run(chan.into_stream(), handler).await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A bare `ssh draupnir`: the command list, as `help` prints it,
        // and exit status 0 (as soft-serve and other SSH apps do).
        let Some((chan, slot, actor)) = self.start(channel, session)? else {
            return Ok(());
        };
        let cmd_session = self.command_session(actor);
        // Only ever shown on a terminal when it has one: CRLF, or the
        // list staircases (the client's terminal is raw).
        let crlf = self.ptys.remove(&channel);
        tokio::spawn(run_exec(
            chan,
            slot,
            cmd_session,
            Ok(vec!["help".into()]),
            crlf,
        ));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Many aliases say `ssh -t`, and a bare `ssh draupnir` from a
        // terminal asks for one: accept it; nothing here is interactive,
        // but the shell's list then needs CRLF line ends.
        if self.actor.is_some()
            && (self.channels.contains_key(&channel) || self.refused.contains_key(&channel))
        {
            self.ptys.insert(channel);
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Nothing here reads the environment; refuse all of it (LANG too).
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// Turn an exec request into argv, or a one-line reason it was refused.
fn parse_command(data: &[u8], max: usize) -> Result<Vec<String>, String> {
    if data.len() > max {
        return Err(format!("the command line is longer than {max} bytes"));
    }
    let line =
        std::str::from_utf8(data).map_err(|_| "the command line is not UTF-8".to_string())?;
    if line.chars().any(|c| c.is_control()) {
        return Err("the command line contains control characters".into());
    }
    let argv =
        shell_words::split(line).map_err(|e| format!("cannot parse the command line: {e}"))?;
    if argv.is_empty() {
        return Err("empty command; try `help`".into());
    }
    Ok(argv)
}

/// Data first, then exit status, EOF and close: the order clients need.
async fn finish_channel(chan: &Channel<Msg>, status: u32) {
    let _ = chan.exit_status(status).await;
    let _ = chan.eof().await;
    let _ = chan.close().await;
}

/// Run one exec request to its end. The command runs in a task of its
/// own: should it panic, the client still gets one line on stderr, exit
/// status 1 and a closed channel, and the session slot is given back
/// (`slot` lives here, outside the command's task). With `crlf`, output
/// goes out with CRLF line ends (for a terminal).
async fn run_exec(
    chan: Channel<Msg>,
    slot: SessionSlot,
    session: CommandSession,
    argv: Result<Vec<String>, String>,
    crlf: bool,
) {
    let _slot = slot;
    let (read_half, write_half) = chan.split();
    let (stdout, stderr): (Writer, Writer) = if crlf {
        (
            Box::new(Crlf::new(write_half.make_writer())),
            Box::new(Crlf::new(write_half.make_writer_ext(Some(1)))),
        )
    } else {
        (
            Box::new(write_half.make_writer()),
            Box::new(write_half.make_writer_ext(Some(1))),
        )
    };
    let user = session.actor.name().to_string();
    let status = match tokio::spawn(exec_body(read_half, stdout, stderr, session, argv)).await {
        Ok(status) => status,
        Err(e) => {
            tracing::error!(%user, error = %e, "ssh command task failed");
            let mut stderr = write_half.make_writer_ext(Some(1));
            let _ = stderr
                .write_all(b"draupnir: internal error: the command failed unexpectedly (logged)\n")
                .await;
            let _ = stderr.flush().await;
            1
        }
    };
    let _ = write_half.exit_status(status).await;
    let _ = write_half.eof().await;
    let _ = write_half.close().await;
}

/// A channel's stdout or stderr.
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// The command (or `scp -t` sink) itself; returns its exit status.
async fn exec_body(
    mut read_half: russh::ChannelReadHalf,
    mut stdout: impl tokio::io::AsyncWrite + Unpin + Send,
    mut stderr: impl tokio::io::AsyncWrite + Unpin + Send,
    session: CommandSession,
    argv: Result<Vec<String>, String>,
) -> u32 {
    let status = match argv {
        Err(reason) => {
            let _ = stderr
                .write_all(format!("draupnir: {reason}\n").as_bytes())
                .await;
            2
        }
        Ok(argv) => {
            let mut stdin = read_half.make_reader();
            if argv.first().map(String::as_str) == Some("scp") {
                scp::sink(&session, &argv[1..], &mut stdin, &mut stdout, &mut stderr).await
            } else {
                let name = argv.first().cloned().unwrap_or_default();
                tracing::info!(user = %session.actor.name(), command = %name, "ssh command");
                commands::run(
                    &session,
                    argv,
                    commands::Io {
                        stdin: &mut stdin,
                        stdout: &mut stdout,
                        stderr: &mut stderr,
                    },
                )
                .await
            }
        }
    };
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            parse_command(b"upload-image 1", 100).unwrap(),
            vec!["upload-image", "1"]
        );
        assert_eq!(
            parse_command(b"new-image --script 'a b'", 100).unwrap(),
            vec!["new-image", "--script", "a b"]
        );
        assert!(parse_command(b"help\nrm -rf /", 100).is_err());
        assert!(parse_command(b"help\x1b[2J", 100).is_err());
        assert!(parse_command(b"unterminated 'quote", 100).is_err());
        assert!(parse_command(b"   ", 100).is_err());
        assert!(parse_command(&[b'a'; 101], 100).is_err());
        assert!(parse_command(b"\xff", 100).is_err());
    }
}
