//! Config text as an operator (or a careless template) might write it. The
//! parser must refuse with an error naming the file, or return a config
//! whose promises hold: valid group names, dependencies that exist and do
//! not cycle, a frame size in range.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const FILE: &str = "/etc/corral/fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match corral::config::Config::parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => {
            assert!(e.to_string().starts_with(&format!("{FILE}: ")), "{e}");
            return;
        }
    };
    assert!((64..=64 * 1024 * 1024).contains(&config.max_frame_size));
    assert!(config.output_buffer >= 64 * 1024);
    assert!(config.slice.ends_with(".slice"));
    let edges = config.groups.values().map(|g| (g.name.as_str(), g.after.as_slice()));
    let layers = corral::config::dependency_layers(edges).expect("a config that parsed has no cycle");
    let layer_of = |name: &str| layers.iter().position(|l| l.iter().any(|n| n == name));
    assert_eq!(layers.iter().map(Vec::len).sum::<usize>(), config.groups.len());
    for (name, group) in &config.groups {
        assert_eq!(name, &group.name);
        assert!(corral::target::check_group_name(name).is_ok(), "{name:?}");
        assert!(!group.command.is_empty());
        assert!(group.restart_backoff_initial <= group.restart_backoff_max);
        assert!(group.start_limit_burst >= 1 && group.max_unavailable >= 1);
        let at = layer_of(name).expect("every group is in a layer");
        for dep in &group.after {
            let dep_at = layer_of(dep).expect("every dependency is a group");
            assert!(dep_at < at, "{dep} starts before {name}");
        }
    }
});
