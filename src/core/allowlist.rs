//! The IP allow-list: which addresses may reach which instance port, and
//! keeping the firewall chain equal to that (after every change, debounced,
//! and every `whitelist_reconcile_interval`). A firewall failure is logged
//! and retried; it never fails a user's request.

use crate::core::model::InstanceId;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use super::error::{BadInput, Internal, Missing};
use super::{Actor, CoreError, Result, Service};
use crate::guard::iptables::{self, Changes, Rule};

/// Normalise an address for the allow-list (`::ffff:a.b.c.d` becomes
/// IPv4) and refuse the ones a rule must never name.
pub fn allowable(addr: IpAddr) -> Result<IpAddr> {
    let addr = match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(BadInput::NotAllowListable(addr).into());
    }
    if let IpAddr::V4(v4) = addr {
        if v4.is_broadcast() {
            return Err(BadInput::NotAllowListable(addr).into());
        }
    }
    Ok(addr)
}

/// The firewall rules a store's allow-list asks for (what the daemon keeps
/// the chain equal to; `doctor` compares against it read-only).
pub fn rules_from_store(store: &crate::core::store::Store) -> Result<BTreeSet<Rule>> {
    Ok(store
        .allowed_ports()?
        .into_iter()
        .filter_map(|(port, a)| a.parse::<IpAddr>().ok().map(|source| Rule { port, source }))
        .collect())
}

impl Service {
    /// The rules the database asks for.
    pub fn desired_rules(&self) -> Result<BTreeSet<Rule>> {
        rules_from_store(&self.inner.store)
    }

    /// Allow `addr` to reach instance `id` (the owner, for a colleague or a
    /// CI runner; front doors also call it with the client's address).
    pub fn allow_address(&self, actor: &Actor, id: InstanceId, addr: IpAddr) -> Result<IpAddr> {
        self.owned_instance_for(actor, id)?;
        let addr = allowable(addr)?;
        self.inner.store.record_address(id, &addr.to_string())?;
        self.poke_guard();
        Ok(addr)
    }

    /// Take an address off an instance's allow-list.
    pub fn disallow_address(&self, actor: &Actor, id: InstanceId, addr: IpAddr) -> Result<()> {
        self.owned_instance_for(actor, id)?;
        let addr = allowable(addr)?;
        if !self.inner.store.delete_address(id, &addr.to_string())? {
            return Err(Missing::AllowedAddress {
                address: addr,
                instance: id,
            }
            .into());
        }
        self.poke_guard();
        Ok(())
    }

    /// Ask for a reconcile soon (debounced). A no-op when allow-listing is off.
    pub(crate) fn poke_guard(&self) {
        self.inner.guard_wake.notify_one();
    }

    /// Make the chain equal to the database now.
    pub async fn reconcile_firewall(&self, dry_run: bool) -> Result<Changes> {
        let desired = self.desired_rules()?;
        tokio::task::spawn_blocking(move || iptables::reconcile(&desired, dry_run))
            .await
            .map_err(|e| CoreError::from(Internal::Join(e)))?
            .map_err(|e| Internal::Firewall(e).into())
    }

    /// The reconcile loop; it does nothing while `enable_ip_whitelisting`
    /// is off (a reload may turn it on).
    pub(crate) fn spawn_guard(&self) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let wake = self.inner.guard_wake.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { break };
                let svc = Service { inner };
                let config = svc.config();
                let every = config.whitelist_reconcile_interval;
                let result = if config.enable_ip_whitelisting {
                    svc.reconcile_firewall(false).await
                } else {
                    Ok(Changes::default())
                };
                match result {
                    Ok(c) if !c.is_empty() => {
                        tracing::info!(added = ?c.added, removed = ?c.removed, "allow-list reconciled")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "allow-list reconcile failed; will retry")
                    }
                }
                drop(svc);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {
                        // Debounce a burst of changes into one reconcile.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
}
