//! The iptables allow-list, inside a network namespace this test creates
//! (and removes): the core runs in it (this test binary re-executed under
//! `nsenter --net`), so its iptables calls touch only that namespace.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use draupnir::core::InstanceRef;
use draupnir::guard::iptables::CHAIN;

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("drp-{}-{}", std::process::id(), rand::random::<u16>());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add");
        let ns = Netns(name);
        assert!(ns.run(&["ip", "link", "set", "lo", "up"]).status.success());
        ns
    }

    fn run(&self, argv: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .args(argv)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn chain() -> String {
    let out = Command::new("iptables")
        .args(["-S", CHAIN])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; chain now:\n{}", chain());
}

/// Runs inside the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the network namespace made by allow_list_in_a_namespace"]
async fn guard_child() {
    if std::env::var("DRAUPNIR_GUARD_CHILD").is_err() {
        return;
    }
    // A rule in another chain that must survive.
    assert!(Command::new("iptables")
        .args(["-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"])
        .status()
        .unwrap()
        .success());
    let env =
        TestEnv::with("enable_ip_whitelisting = true\nwhitelist_reconcile_interval = \"1s\"").await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let info = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let id = info.instance.id;
    let port = info.port;
    svc.allow_address(&admin, id, "192.0.2.7".parse().unwrap())
        .unwrap();
    svc.allow_address(&admin, id, "2001:db8::5".parse().unwrap())
        .unwrap();
    let want = format!("-A {CHAIN} -s 192.0.2.7/32 -p tcp -m tcp --dport {port} -j ACCEPT");
    until("the owner's rule", || chain().contains(&want)).await;
    let v6 = Command::new("ip6tables")
        .args(["-S", CHAIN])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v6.stdout).contains(&format!(
            "-s 2001:db8::5/128 -p tcp -m tcp --dport {port} -j ACCEPT"
        )),
        "{}",
        String::from_utf8_lossy(&v6.stdout)
    );
    // A rule put into the chain by hand goes at the next reconcile.
    assert!(Command::new("iptables")
        .args(["-A", CHAIN, "-s", "203.0.113.9/32", "-j", "ACCEPT"])
        .status()
        .unwrap()
        .success());
    until("the foreign rule to go", || {
        !chain().contains("203.0.113.9")
    })
    .await;
    assert!(chain().contains(&want));
    // Taking an address off, and destroying the instance, remove rules.
    svc.disallow_address(&admin, id, "2001:db8::5".parse().unwrap())
        .unwrap();
    svc.destroy_instance(&admin, id).await.unwrap();
    until("the instance's rules to go", || {
        !chain().contains("--dport")
    })
    .await;
    let input = Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&input.stdout).contains("--dport 9 -j ACCEPT"),
        "INPUT untouched"
    );
    // Doctor-style dry run: nothing left to change.
    assert!(svc.reconcile_firewall(true).await.unwrap().is_empty());
}

#[test]
fn allow_list_in_a_namespace() {
    let ns = Netns::new();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.0))
        .arg(exe)
        .args([
            "guard_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DRAUPNIR_GUARD_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    // The host's own tables never saw the chain.
    let host = Command::new("iptables")
        .args(["-S", CHAIN])
        .output()
        .unwrap();
    assert!(!host.status.success() || !String::from_utf8_lossy(&host.stdout).contains("--dport"));
}
