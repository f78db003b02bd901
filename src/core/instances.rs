//! Instances: create (flow 4), show, credentials (flow 5), destroy (flow 6).

use crate::core::model::{ImageId, InstanceId, UserId};
use std::sync::Arc;
use std::time::Duration;

use super::error::{Conflict, InstanceStart, Internal, InvalidState, Missing};
use super::image_guard::ImageHold;
use super::{Actor, Caller, CoreError, Result, Service};
use crate::certs;
use crate::core::postgres::cluster::{self, CLIENT_ROLE};
use crate::core::postgres::pgconn;
use crate::core::postgres::process::{self, Postmaster, PostmasterSpec, Shutdown};
use crate::core::postgres::serving::ServingCheck;
use crate::core::postgres::supervisor::Start;
use crate::core::storage::btrfs;
use crate::core::store::{Credentials, Image, Instance, InstanceState, StoreError};

/// Which image a new instance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceRef {
    Id(ImageId),
    /// The newest ready image.
    Latest,
}

/// Options of a new instance.
#[derive(Debug, Clone, Default)]
pub struct NewInstance {
    /// How long it lives (None: `default_instance_ttl`, or forever).
    pub ttl: Option<Duration>,
    /// The OAuth refresh token the request came with: the cleaner destroys
    /// the instance once the provider revokes it.
    pub oauth_refresh_token: Option<crate::secret::Secret<String>>,
}

/// Everything a client needs to connect to an instance, its key material
/// included. The core makes one only for the instance's owner
/// ([`Service::instance_credentials`], and creating an instance for the
/// actor who then owns it): admins and the upload user see and destroy
/// other people's instances (as [`Instance`], which holds no key), never
/// get this.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub instance: Instance,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub credentials: Credentials,
}

/// Releases an instance id's lock when dropped.
struct IdLock<'a> {
    service: &'a Service,
    id: InstanceId,
}

impl Drop for IdLock<'_> {
    fn drop(&mut self) {
        self.service
            .inner
            .instance_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Service {
    async fn lock_instance(&self, id: InstanceId) -> IdLock<'_> {
        loop {
            {
                let mut set = self
                    .inner
                    .instance_locks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if set.insert(id) {
                    return IdLock { service: self, id };
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The postmaster command for an instance.
    pub(crate) fn instance_spec(
        &self,
        id: InstanceId,
        port: u16,
        major: u32,
    ) -> Result<PostmasterSpec> {
        let bin = cluster::find_bin(&self.config().postgres.bin_root, major)
            .map_err(InstanceStart::Cluster)?;
        let datadir = self.inner.layout.instance(id);
        let mut settings = vec![
            (
                "listen_addresses".into(),
                self.config().postgres.listen_addresses.clone(),
            ),
            (
                "unix_socket_directories".into(),
                datadir.display().to_string(),
            ),
            ("cluster_name".into(), format!("draupnir-{id}")),
            // A subscription carried over in the upload must not connect
            // to its publisher (production) from every instance.
            ("max_logical_replication_workers".into(), "0".into()),
        ];
        settings.extend(super::disk::postgres_settings(self));
        Ok(PostmasterSpec {
            bin,
            port,
            tcp: true,
            settings,
            datadir,
            log_file: self.log_file("instance", id),
            user: self.inner.user.clone(),
            confinement: self.config().postgres.confinement,
            reach: Default::default(),
        })
    }

    /// How to check that instance `port`'s postmaster serves its clients:
    /// with its own client certificate, on every address they use.
    pub(crate) fn serving_check(&self, port: u16, creds: &Credentials) -> Result<ServingCheck> {
        let cfg = self.config();
        let tls = pgconn::tls_connector(
            &creds.ca_certificate,
            Some((&creds.client_certificate, creds.client_key.expose())),
        )
        .map_err(Internal::Tls)?;
        Ok(ServingCheck::new(
            tls,
            &cfg.postgres.listen_addresses,
            port,
            CLIENT_ROLE,
            &cfg.postgres.database,
            cfg.postgres.start_timeout,
        ))
    }

    /// Flow 4: a writable snapshot of a ready image, fresh certificates,
    /// a supervised postmaster, ready when a certificate-authenticated
    /// connection succeeds.
    pub async fn create_instance(
        &self,
        caller: impl Into<Caller>,
        image: InstanceRef,
    ) -> Result<ConnectionInfo> {
        self.create_instance_with(caller, image, NewInstance::default())
            .await
    }

    /// [`Service::create_instance`] with options. A warm instance of the
    /// image is handed over when the pool has one; otherwise one is started
    /// now (the cold path). Runs to the end even if the caller goes away
    /// (it holds disk and processes); the caller's address goes on the new
    /// instance's allow-list.
    pub async fn create_instance_with(
        &self,
        caller: impl Into<Caller>,
        image: InstanceRef,
        opts: NewInstance,
    ) -> Result<ConnectionInfo> {
        let caller = caller.into();
        let svc = self.clone();
        super::detached(async move {
            let info = svc.make_instance(&caller.actor, image, opts).await?;
            svc.inner.counters.instance_created();
            svc.note_address(&caller, info.instance.id);
            Ok(info)
        })
        .await
    }

    async fn make_instance(
        &self,
        actor: &Actor,
        image: InstanceRef,
        opts: NewInstance,
    ) -> Result<ConnectionInfo> {
        let ttl = self.instance_ttl(opts.ttl)?;
        let started = std::time::Instant::now();
        // Held until the instance is made (or handed over): the image is
        // not destroyed meanwhile, and a destroy under way is not raced.
        let (_image_hold, image) = self.hold_image_for(image).await?;
        let major = image
            .pg_major
            .ok_or_else(|| CoreError::from(Internal::NoMajor(image.id)))?;
        self.check_user_quota(actor)?;
        let token = opts
            .oauth_refresh_token
            .as_ref()
            .map(|t| t.expose().as_str());
        if let Some(info) = self.hand_over(actor, image.id, ttl, token)? {
            tracing::info!(instance = %info.instance.id, image = %image.id, port = info.port, user = %actor.name(),
                warm = true, ms = started.elapsed().as_millis() as u64, "instance created");
            return Ok(info);
        }
        // Held until the row is in: no refill takes the room made here.
        let _room = self.make_room(image.id).await?;
        self.check_free_space("new instance")?;
        let (id, port) = self
            .start_instance(image.id, major, actor.id(), false, ttl, token)
            .await?;
        tracing::info!(instance = %id, image = %image.id, port, user = %actor.name(),
            warm = false, ms = started.elapsed().as_millis() as u64, "instance created");
        // The pool of this image is empty: it may want refilling.
        self.poke_pool();
        self.owner_connection(actor, id)
    }

    /// Hold the image a new instance comes from (see `image_guard`). For
    /// `latest`, an image being destroyed meanwhile makes way for the next
    /// newest.
    async fn hold_image_for(&self, image: InstanceRef) -> Result<(ImageHold, Image)> {
        if let InstanceRef::Id(id) = image {
            return self.hold_ready_image(id).await;
        }
        let mut tries = 0;
        loop {
            let Some(latest) = self.latest_ready_image()?.map(|i| i.id) else {
                return Err(Missing::LatestImage.into());
            };
            match self.hold_ready_image(latest).await {
                Err(CoreError::ImageDestroying { .. } | CoreError::NotFound(_)) if tries < 10 => {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Start a new instance of a ready image (flow 4): record the intent,
    /// snapshot, certificates, postmaster. `pooled`: a warm instance for the
    /// pool. Everything is undone when it fails. Returns its id and port.
    pub(crate) async fn start_instance(
        &self,
        image_id: ImageId,
        major: u32,
        owner_id: UserId,
        pooled: bool,
        ttl: Option<Duration>,
        oauth_refresh_token: Option<&str>,
    ) -> Result<(InstanceId, u16)> {
        let cfg = self.config();
        let row = self
            .inner
            .store
            .insert_instance(
                image_id,
                owner_id,
                pooled,
                cfg.min_instance_port,
                cfg.max_instance_port,
                cfg.max_instances_total,
                process::port_free,
            )
            .map_err(|e| match e {
                StoreError::NoFreePort => CoreError::NoFreePort {
                    min: cfg.min_instance_port,
                    max: cfg.max_instance_port,
                },
                StoreError::TooManyInstances { count, max } => {
                    super::policy::total_quota_error(count, max)
                }
                other => other.into(),
            })?;
        let id = row.id;
        let _lock = self.lock_instance(id).await;
        if self.inner.store.instance(id)?.is_none() {
            // Destroyed (by id) before we got to it: nothing was made.
            return Err(Conflict::DestroyedWhileCreating { id }.into());
        }
        let mut outcome = Ok(());
        if let Some(ttl) = ttl {
            outcome = super::policy::expiry_after(ttl)
                .and_then(|until| Ok(self.inner.store.set_instance_expiry(id, Some(until))?));
        }
        if let (Ok(()), Some(token)) = (&outcome, oauth_refresh_token) {
            outcome = Ok(self.inner.store.set_instance_oauth_token(id, token)?);
        }
        let outcome = match outcome {
            Ok(()) => self.bring_up(id, image_id, row.port, major).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok((id, row.port)),
            Err(e) => {
                tracing::warn!(instance = %id, pooled, error = %e, "instance creation failed");
                self.stop_instance_process(id).await;
                let _ = btrfs::delete_subvolume(&self.inner.layout.instance(id));
                let _ = self.inner.store.delete_instance(id);
                Err(e)
            }
        }
    }

    async fn bring_up(
        &self,
        id: InstanceId,
        image_id: ImageId,
        port: u16,
        major: u32,
    ) -> Result<()> {
        let cfg = self.config();
        let dir = self.inner.layout.instance(id);
        btrfs::snapshot(&self.inner.layout.snapshot(image_id), &dir, false)?;
        self.limit_instance_disk(&dir)?;
        let mut names = vec![cfg.public_hostname.clone()];
        for n in ["localhost", "127.0.0.1", "::1"] {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
        let c = certs::issue_instance_certs(
            &format!("instance {id}"),
            &names,
            CLIENT_ROLE,
            cfg.postgres.certificate_validity,
        )
        .map_err(Internal::Certs)?;
        let user = &self.inner.user;
        let write = |name: &str, pem: &str| {
            cluster::write_owned(&dir, name, pem.as_bytes(), user)
                .map_err(|e| CoreError::from(InstanceStart::Cluster(e)))
        };
        write(cluster::SERVER_CERT, &c.server_cert_pem)?;
        write(cluster::SERVER_KEY, c.server_key_pem.expose())?;
        write(cluster::CA_CERT, &c.ca_cert_pem)?;
        // Images sealed before the instance user lost its mapping still
        // carry it: only root (the daemon) may use an instance's socket.
        write("pg_ident.conf", cluster::FINAL_IDENT)?;
        let creds = Credentials {
            ca_certificate: c.ca_cert_pem.clone(),
            client_certificate: c.client_cert_pem.clone(),
            client_key: c.client_key_pem.clone(),
        };
        self.inner.store.set_instance_credentials(id, &creds)?;
        self.start_and_wait(id, port, major, &creds).await
    }

    /// Start instance `id`'s postmaster, wait for a certificate-authenticated
    /// connection, mark it running and supervise it.
    async fn start_and_wait(
        &self,
        id: InstanceId,
        port: u16,
        major: u32,
        creds: &Credentials,
    ) -> Result<()> {
        let spec = self.instance_spec(id, port, major)?;
        let check = Arc::new(self.serving_check(port, creds)?);
        let mut pm = process::spawn(&spec).map_err(InstanceStart::Spawn)?;
        if let Err(why) = check.wait(&mut pm).await {
            pm.stop(Duration::from_secs(10)).await;
            let tail = process::log_tail(&spec.log_file, 5);
            return Err(if why.is_deaf() || tail.is_empty() {
                InstanceStart::NotServing(why)
            } else {
                InstanceStart::Log {
                    why,
                    log_tail: tail,
                }
            }
            .into());
        }
        self.inner.store.set_instance_pid(id, pm.pid())?;
        self.inner
            .store
            .set_instance_state(id, InstanceState::Running, None)?;
        self.inner
            .supervisor
            .watch(id, spec, pm, Some(check), Start::Serving);
        Ok(())
    }

    /// Return an instance to its image, keeping its id, port and
    /// credentials: a fresh snapshot is prepared beside the old one, then
    /// the postmaster is stopped, the snapshots swapped and it is started.
    /// The owner or an admin may; the answer carries no key material (the
    /// owner's certificates are unchanged: `env` gives them).
    pub async fn reset_instance(&self, actor: &Actor, id: InstanceId) -> Result<Instance> {
        let started = std::time::Instant::now();
        let inst = self.owned_instance_for(actor, id)?;
        // The image before the instance (see `image_guard`), and the
        // instance looked at again once it is ours: it may have gone with
        // its image meanwhile.
        let (_image_hold, image) = self.hold_ready_image(inst.image_id).await?;
        let _lock = self.lock_instance(id).await;
        let inst = self.owned_instance_for(actor, id)?;
        if !matches!(inst.state, InstanceState::Running | InstanceState::Failed) {
            return Err(InvalidState::Instance {
                id,
                state: inst.state,
            }
            .into());
        }
        let major = image
            .pg_major
            .ok_or_else(|| CoreError::from(Internal::NoMajor(image.id)))?;
        let creds = self
            .inner
            .store
            .instance_credentials(id)?
            .ok_or_else(|| CoreError::from(InvalidState::NoCredentials { id }))?;
        let dir = self.inner.layout.instance(id);
        let fresh = self.inner.layout.instances().join(format!("{id}.reset"));
        btrfs::delete_subvolume(&fresh)?;
        btrfs::snapshot(&self.inner.layout.snapshot(inst.image_id), &fresh, false)?;
        if let Err(e) = self.limit_instance_disk(&fresh) {
            let _ = btrfs::delete_subvolume(&fresh);
            return Err(e);
        }
        // The instance's certificates, and the socket mapped to root only
        // whatever the image was sealed with.
        let ident = (
            "pg_ident.conf",
            Ok(cluster::FINAL_IDENT.as_bytes().to_vec()),
        );
        let certs = [cluster::SERVER_CERT, cluster::SERVER_KEY, cluster::CA_CERT].map(|name| {
            let pem = std::fs::read(dir.join(name))
                .map_err(|source| CoreError::from(Internal::ReadCert { name, source }));
            (name, pem)
        });
        for (name, contents) in certs.into_iter().chain([ident]) {
            let copied = contents.and_then(|pem| {
                cluster::write_owned(&fresh, name, &pem, &self.inner.user)
                    .map_err(|e| CoreError::from(Internal::Cluster(e)))
            });
            if let Err(e) = copied {
                let _ = btrfs::delete_subvolume(&fresh);
                return Err(e);
            }
        }
        self.stop_instance_process(id).await;
        btrfs::delete_subvolume(&dir)?;
        std::fs::rename(&fresh, &dir).map_err(Internal::Swap)?;
        if let Err(e) = self.start_and_wait(id, inst.port, major, &creds).await {
            self.inner
                .store
                .set_instance_state(id, InstanceState::Failed, Some(&e.to_string()))?;
            return Err(e);
        }
        tracing::info!(instance = %id, user = %actor.name(), ms = started.elapsed().as_millis() as u64, "instance reset");
        self.instance_for(actor, id)
    }

    /// An instance someone owns, for what only an owner does (connect,
    /// reset, extend, allow addresses): a warm instance waiting in the pool
    /// is refused even to admins, so no credentials or addresses of it
    /// exist outside the daemon before its owner gets it.
    pub(crate) fn owned_instance_for(&self, actor: &Actor, id: InstanceId) -> Result<Instance> {
        let inst = self.instance_for(actor, id)?;
        if inst.pooled {
            return Err(InvalidState::WarmInstance { id }.into());
        }
        Ok(inst)
    }

    fn instance_for(&self, actor: &Actor, id: InstanceId) -> Result<Instance> {
        let not_found = || CoreError::NotFound(Missing::Instance(id));
        let inst = self.inner.store.instance(id)?.ok_or_else(not_found)?;
        // Someone else's instance does not exist, as far as a user can tell.
        if inst.owner_id != actor.id() && !actor.is_admin() {
            return Err(not_found());
        }
        Ok(inst)
    }

    /// A number that changes whenever anything stored changes; a listing
    /// read after it was taken is exact for as long as it stays the same
    /// (front doors may keep a rendered listing that long).
    pub fn listing_version(&self) -> u64 {
        self.inner.store.version()
    }

    /// The caller's instances; `all` (admins only) lists everyone's.
    pub fn list_instances(&self, actor: &Actor, all: bool) -> Result<Vec<Instance>> {
        if all {
            actor.require_admin("listing every user's instances")?;
            return Ok(self.inner.store.instances(None, None)?);
        }
        Ok(self.inner.store.instances(Some(actor.id()), None)?)
    }

    /// One instance of the caller's (admins: anyone's).
    pub fn instance(&self, actor: &Actor, id: InstanceId) -> Result<Instance> {
        self.instance_for(actor, id)
    }

    /// The one place key material leaves the core: instance `id` with its
    /// credentials, for its owner only. Anyone else is refused — a user as
    /// if it did not exist, an admin or the upload user with
    /// [`CoreError::NotOwner`] (HTTP: 404, as LEGACY_API.md says), and so
    /// is everyone for a warm instance waiting in the pool (it has no owner
    /// yet).
    pub(crate) fn owner_connection(&self, actor: &Actor, id: InstanceId) -> Result<ConnectionInfo> {
        let instance = self.instance_for(actor, id)?;
        if instance.owner_id != actor.id() {
            return Err(CoreError::NotOwner {
                id,
                owner: if instance.pooled {
                    "the warm pool".into()
                } else {
                    instance.owner_name
                },
            });
        }
        let credentials = self
            .inner
            .store
            .instance_credentials(id)?
            .ok_or_else(|| CoreError::from(InvalidState::NoCredentialsYet { id }))?;
        // The database the image's script ran in: the upload's only one
        // of its own, or `[postgres] database`.
        let database = self
            .inner
            .store
            .image(instance.image_id)?
            .and_then(|i| i.database)
            .unwrap_or_else(|| self.config().postgres.database.clone());
        Ok(ConnectionInfo {
            host: self.config().public_hostname.clone(),
            port: instance.port,
            user: CLIENT_ROLE.into(),
            database,
            instance,
            credentials,
        })
    }

    /// Flow 5: how to connect, with the certificates — to the instance's
    /// owner only ([`Service::owner_connection`]).
    /// The caller's address goes on the allow-list.
    pub fn instance_credentials(
        &self,
        caller: impl Into<Caller>,
        id: InstanceId,
    ) -> Result<ConnectionInfo> {
        let caller = caller.into();
        let info = self.connection_for(&caller.actor, id)?;
        self.note_address(&caller, id);
        Ok(info)
    }

    fn connection_for(&self, actor: &Actor, id: InstanceId) -> Result<ConnectionInfo> {
        let inst = self.instance_for(actor, id)?;
        if inst.owner_id == actor.id()
            && (inst.state == InstanceState::Creating || inst.state == InstanceState::Destroying)
        {
            return Err(InvalidState::Instance {
                id,
                state: inst.state,
            }
            .into());
        }
        self.owner_connection(actor, id)
    }

    /// Remember the address the owner came from, for the allow-list; a
    /// failure to record is logged, never shown.
    fn note_address(&self, caller: &Caller, id: InstanceId) {
        if let Some(ip) = caller.from {
            if let Err(e) = self.allow_address(&caller.actor, id, ip) {
                tracing::debug!(instance = %id, %ip, error = %e, "address not recorded");
            }
        }
    }

    /// The addresses allowed to reach an instance.
    pub fn allowed_addresses(&self, actor: &Actor, id: InstanceId) -> Result<Vec<String>> {
        self.instance_for(actor, id)?;
        Ok(self.inner.store.addresses(id)?)
    }

    /// Flow 6, for the owner or an admin (who may also destroy a warm
    /// instance; the pool starts another).
    /// Runs to the end even if the caller goes away.
    pub async fn destroy_instance(&self, actor: &Actor, id: InstanceId) -> Result<()> {
        let (svc, actor) = (self.clone(), actor.clone());
        super::detached(async move {
            svc.destroy_own_instance(&actor, id).await?;
            svc.inner.counters.instance_destroyed();
            Ok(())
        })
        .await
    }

    async fn destroy_own_instance(&self, actor: &Actor, id: InstanceId) -> Result<()> {
        let inst = self.instance_for(actor, id)?;
        if inst.pooled && !self.inner.store.retire_pooled_instance(id)? {
            return Err(Conflict::NoLongerWarm { id }.into());
        }
        self.destroy_instance_unchecked(id).await?;
        tracing::info!(instance = %id, user = %actor.name(), "instance destroyed");
        // Room under max_instances_total, or a warm instance to replace.
        self.poke_pool();
        Ok(())
    }

    /// Stop, delete the subvolume, delete the row. The intent is written
    /// first so a restart finishes the job.
    pub(crate) async fn destroy_instance_unchecked(&self, id: InstanceId) -> Result<()> {
        let _lock = self.lock_instance(id).await;
        if self.inner.store.instance(id)?.is_none() {
            return Ok(());
        }
        self.inner
            .store
            .set_instance_state(id, InstanceState::Destroying, None)?;
        self.stop_instance_process(id).await;
        btrfs::delete_subvolume(&self.inner.layout.instance(id))?;
        self.inner.store.delete_instance(id)?;
        let _ = std::fs::remove_file(self.log_file("instance", id));
        self.poke_guard();
        Ok(())
    }

    /// Stop whatever postmaster serves instance `id`, supervised or not.
    /// Every caller deletes the data directory next, so this is an
    /// immediate shutdown: no checkpoint writes pages nobody will read.
    pub(crate) async fn stop_instance_process(&self, id: InstanceId) {
        self.inner
            .supervisor
            .shutdown(&id, Shutdown::Immediate)
            .await;
        let dir = self.inner.layout.instance(id);
        if let Some(pid) = process::running_postmaster(&dir) {
            Postmaster::Adopted(pid)
                .shutdown(Shutdown::Immediate, Duration::from_secs(10))
                .await;
        }
        process::reap_leftovers(&dir, Duration::from_secs(2)).await;
    }
}
