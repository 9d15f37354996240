//! `portmon_netns_info`: what runs in each live namespace, so that a
//! namespace's series can be joined to its pod, container or unit.

use super::{definitions as def, families::Families, ScrapeInput};

/// Adds one info series per namespace known.
pub fn add(input: &ScrapeInput<'_>, families: &mut Families) {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let series = input.workloads.iter().map(|(netns, w)| {
        let values = vec![
            netns.clone(),
            text(&w.pod_uid),
            text(&w.pod),
            text(&w.namespace),
            text(&w.container_id),
            w.runtime.map(|r| r.label().to_owned()).unwrap_or_default(),
            text(&w.unit),
        ];
        (values, 1.0)
    });
    families.add(&def::NETNS_INFO, series);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::{
        fixture::{Fixture, Host},
        Metrics,
    };
    use crate::workload::Workload;

    #[test]
    fn every_namespace_has_one_info_series_with_valid_utf8_labels() {
        let id = "ab".repeat(32);
        let uid = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
        let mut pod = Workload::from_cgroup_path(
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            )
            .as_bytes(),
        );
        pod.pod = Some("web-0".into());
        pod.namespace = Some("shop".into());
        let odd = Workload::from_cgroup_path(b"/t\xc3\xa9st-\xff\"\\\n.service");
        let host = Host {
            workloads: vec![
                ("host".into(), Workload::default()),
                ("cni-1".into(), pod),
                ("t\u{e9}st".into(), odd),
            ],
            ..Host::default()
        };
        let metrics = Metrics::new(Arc::new(Fixture {
            host: Mutex::new(host),
        }))
        .unwrap();
        let text = metrics.render().unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("portmon_netns_info{"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let want = format!(
            r#"portmon_netns_info{{netns="cni-1",pod_uid="{uid}",pod="web-0",namespace="shop",container_id="{id}",runtime="containerd",unit="cri-containerd-{id}.scope"}} 1"#
        );
        assert!(lines.contains(&want.as_str()), "{text}");
        assert!(
            lines.contains(
                &r#"portmon_netns_info{netns="host",pod_uid="",pod="",namespace="",container_id="",runtime="",unit=""} 1"#
            ),
            "{text}"
        );
        // Quotes, backslashes and newlines escaped; the invalid byte replaced.
        assert!(
            text.contains("unit=\"t\u{e9}st-\u{fffd}\\\"\\\\\\n.service\""),
            "{text}"
        );
    }
}
