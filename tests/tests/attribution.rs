//! Local attribution on the real kernel: processes moved into cgroup trees
//! shaped exactly like kubelet's (systemd and cgroupfs drivers, with and
//! without a QoS level) and into a systemd service cgroup make real
//! connections from a network namespace; the agent names pod UID, container
//! ID or unit from the cgroup id it captured in the kernel — with no
//! Kubernetes API at all.
use std::{net::SocketAddr, time::Duration};

use egress_tests::{
    Agent, AgentMode,
    cgroups::{Layout, TestCgroup},
    lab::{ConnectLab, LabAddrs},
    require_root,
};

#[test]
fn connections_are_attributed_to_pod_container_or_unit() {
    require_root!();
    let lab = ConnectLab::new(LabAddrs {
        client4: "198.19.11.10".parse().expect("ip"),
        server4: "198.19.11.20".parse().expect("ip"),
        client6: "fd00:11::10".parse().expect("ip"),
        server6: "fd00:11::20".parse().expect("ip"),
        base_port: 26000,
        ..LabAddrs::default()
    })
    .expect("lab");
    let mut agent = Agent::start(AgentMode::Watch(vec![])).expect("agent");
    let layouts = [
        Layout::Systemd { qos: Some("burstable") },
        Layout::Systemd { qos: None },
        Layout::Cgroupfs { qos: Some("besteffort") },
        Layout::Cgroupfs { qos: None },
        Layout::Unit,
    ];
    let dst = SocketAddr::new(lab.addrs.server4, 26000);
    for (i, layout) in layouts.iter().enumerate() {
        let cg = TestCgroup::new(*layout, i as u64 + 1).expect("cgroup");
        // The child waits until it has been moved, then connects: the
        // kernel sees the connecting task inside the cgroup.
        let script = format!(
            "import socket,sys,time\nfor _ in range(200):\n  if '{}' in open('/proc/self/cgroup').read(): break\n  time.sleep(0.01)\ns=socket.create_connection(('{}',{}),timeout=5)\ns.recv(10)\ns.close()",
            cg.path().file_name().and_then(|n| n.to_str()).expect("leaf name"),
            dst.ip(),
            dst.port()
        );
        let mut child = lab.client.command(&["python3", "-c", &script]).spawn().expect("spawn");
        cg.enter(child.id()).expect("enter cgroup");
        assert!(child.wait().expect("wait").success(), "{layout:?}: client failed");
        let pid = u64::from(child.id());
        let rec = agent
            .wait_for(Duration::from_secs(10), |v| v["pid"].as_u64() == Some(pid))
            .unwrap_or_else(|e| panic!("{layout:?}: {e:#}"));
        assert_eq!(rec["verdict"], "ok", "{layout:?}: {rec}");
        match layout {
            Layout::Unit => {
                assert_eq!(rec["unit"].as_str(), Some(cg.unit.as_str()), "{rec}");
                assert!(rec["pod_uid"].is_null(), "{rec}");
            }
            _ => {
                assert_eq!(rec["pod_uid"].as_str(), Some(cg.pod_uid.as_str()), "{layout:?}: {rec}");
                assert_eq!(
                    rec["container_id"].as_str(),
                    Some(cg.container_id.as_str()),
                    "{layout:?}: {rec}"
                );
            }
        }
        assert!(
            rec["cgroup"].as_str().is_some_and(|p| cg.path().ends_with(p.trim_start_matches('/'))),
            "{rec}"
        );
        assert_eq!(
            rec["dst_class"], "public",
            "198.19/16 is outside the default private ranges: {rec}"
        );
    }
    drop(agent);
}
