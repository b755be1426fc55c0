//! Properties of the plan: the cartesian product, exactly once, with unique readable ids.

use std::collections::BTreeSet;

use harness_core::Experiment;
use proptest::prelude::*;

fn experiment(
    conc: &[u32],
    pairs: &[(u32, u32)],
    rates: &[u32],
    extra: &[(String, Vec<i64>)],
) -> Experiment {
    let mut yaml = String::from("name: p\nmodel: {name: m}\n");
    if !conc.is_empty() {
        yaml.push_str(&format!("concurrency: {conc:?}\n"));
    }
    if !rates.is_empty() {
        // Rates with a fraction, to exercise float ids.
        let r: Vec<String> = rates.iter().map(|r| format!("{}.5", r)).collect();
        yaml.push_str(&format!("request_rate: [{}]\n", r.join(", ")));
    }
    let p: Vec<String> = pairs.iter().map(|(i, o)| format!("[{i}, {o}]")).collect();
    yaml.push_str(&format!("benchmark: {{isl_osl: [{}]}}\n", p.join(", ")));
    if !extra.is_empty() {
        yaml.push_str("sweep:\n");
        for (name, values) in extra {
            yaml.push_str(&format!("  {name}: {values:?}\n"));
        }
    }
    Experiment::from_yaml_str(&yaml, "prop.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_plan_is_the_cartesian_product_exactly_once(
        conc in proptest::collection::btree_set(1u32..5000, 0..6),
        pairs in proptest::collection::btree_set((1u32..100_000, 1u32..100_000), 1..5),
        rates in proptest::collection::btree_set(0u32..1000, 0..4),
        extra in proptest::collection::btree_map("[a-z][a-z0-9_]{0,8}", proptest::collection::btree_set(-50i64..50, 1..4), 0..3),
    ) {
        let conc: Vec<u32> = conc.into_iter().collect();
        let rates: Vec<u32> = rates.into_iter().collect();
        prop_assume!(!conc.is_empty() || !rates.is_empty());
        let extra: Vec<(String, Vec<i64>)> = extra
            .into_iter()
            .filter(|(k, _)| !["concurrency", "request_rate", "isl", "osl"].contains(&k.as_str()))
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        let pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
        let exp = experiment(&conc, &pairs, &rates, &extra);
        let plan = exp.plan().expect("plan");

        let expected = conc.len().max(1) * rates.len().max(1) * pairs.len()
            * extra.iter().map(|(_, v)| v.len()).product::<usize>();
        prop_assert_eq!(plan.len(), expected);

        // Ids are unique, valid, and the parameter tuples are unique too.
        let ids: BTreeSet<&str> = plan.cells().iter().map(|c| c.id.as_str()).collect();
        prop_assert_eq!(ids.len(), expected);
        let tuples: BTreeSet<String> = plan.cells().iter().map(|c| format!("{:?}", c.params)).collect();
        prop_assert_eq!(tuples.len(), expected);

        for (i, cell) in plan.cells().iter().enumerate() {
            prop_assert_eq!(cell.index, i);
            // The id is exactly `name=value` pairs of the params, in order.
            let rebuilt: Vec<String> = cell.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            prop_assert_eq!(cell.id.as_str(), rebuilt.join(","));
            // Every value comes from its axis.
            if let Some(c) = cell.param("concurrency") {
                prop_assert!(conc.contains(&(c.as_i64().expect("int") as u32)));
            }
            let isl = cell.param("isl").and_then(|v| v.as_i64()).expect("isl") as u32;
            let osl = cell.param("osl").and_then(|v| v.as_i64()).expect("osl") as u32;
            prop_assert!(pairs.contains(&(isl, osl)));
            // The id is a single safe path segment.
            let key = format!("cells/{}", cell.id);
            prop_assert!(harness_core::ArtifactKey::new(key).is_ok());
        }
        // Ids are stable: planning again gives the same ids in the same order.
        let again = exp.plan().expect("plan");
        prop_assert_eq!(plan, again);
    }
}

#[test]
fn ids_list_concurrency_then_rate_then_isl_osl_then_user_axes() {
    let exp = experiment(&[8], &[(1024, 128)], &[2], &[("replicas".into(), vec![2])]);
    let plan = exp.plan().expect("plan");
    assert_eq!(
        plan.cells()[0].id.as_str(),
        "concurrency=8,request_rate=2.5,isl=1024,osl=128,replicas=2"
    );
}

#[test]
fn a_series_runs_together_with_concurrency_innermost() {
    let exp = experiment(&[1, 2], &[(10, 1), (20, 2)], &[], &[]);
    let ids: Vec<String> = exp
        .plan()
        .expect("plan")
        .cells()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "concurrency=1,isl=10,osl=1",
            "concurrency=2,isl=10,osl=1",
            "concurrency=1,isl=20,osl=2",
            "concurrency=2,isl=20,osl=2"
        ]
    );
}

#[test]
fn an_oversized_product_is_refused() {
    let conc: Vec<u32> = (1..=1000).collect();
    let rates: Vec<u32> = (1..=200).collect();
    let exp = experiment(&conc, &[(1, 1)], &rates, &[]);
    let err = exp.plan().expect_err("200,000 cells");
    assert!(err.to_string().contains("more than"), "{err}");
}
