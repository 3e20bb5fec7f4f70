//! IPAM unit tests on the in-memory store, including random interleavings of allocate and
//! release that must never duplicate or lose an address.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use qingluan_store::memory::MemoryStore;
use qingluan_store::{Op, Store, StoreError};

use super::*;
use crate::settings::IpamSettings;

fn no_routes() -> Vec<IpNet> {
    Vec::new()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn ipam() -> Ipam {
    ipam_on(Arc::new(MemoryStore::new())).await
}

/// An IPAM over `store`, for tests that look into the store.
async fn ipam_on(store: Arc<MemoryStore>) -> Ipam {
    Ipam::with_routes(store, &IpamSettings::default(), no_routes)
        .await
        .unwrap()
}

fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn carves_distinct_subnets_and_reuses_released_ones() {
    rt().block_on(async {
        let ipam = ipam().await;
        let a = ipam
            .request_pool("", "", &opts(&[("pool", "nat")]), false)
            .await
            .unwrap();
        let b = ipam
            .request_pool("", "", &opts(&[("pool", "nat")]), false)
            .await
            .unwrap();
        assert_eq!(a.cidr.to_string(), "10.240.0.0/24");
        assert_eq!(b.cidr.to_string(), "10.240.1.0/24");
        assert_eq!(a.id, "ql/host/10.240.0.0/24");
        ipam.release_pool(&a.id).await.unwrap();
        let c = ipam
            .request_pool("", "", &opts(&[("pool", "nat")]), false)
            .await
            .unwrap();
        assert_eq!(c.cidr, a.cidr);
        let d = ipam
            .request_pool("", "", &opts(&[("pool", "nonat")]), false)
            .await
            .unwrap();
        assert_eq!(d.cidr.to_string(), "10.241.0.0/24");
    });
}

#[test]
fn carving_skips_host_routes() {
    fn routes() -> Vec<IpNet> {
        vec!["10.240.0.0/23".parse().unwrap()]
    }
    rt().block_on(async {
        let ipam = Ipam::with_routes(
            Arc::new(MemoryStore::new()),
            &IpamSettings::default(),
            routes,
        )
        .await
        .unwrap();
        let a = ipam.request_pool("", "", &opts(&[]), false).await.unwrap();
        assert_eq!(a.cidr.to_string(), "10.240.2.0/24");
    });
}

#[test]
fn exhausted_pool_is_reported() {
    rt().block_on(async {
        let ipam = ipam().await;
        ipam.create_pool(Pool {
            name: "tiny".into(),
            subnet: "10.9.0.0/23".parse().unwrap(),
            prefix: 24,
            kind: PoolKind::Host,
        })
        .await
        .unwrap();
        for _ in 0..2 {
            ipam.request_pool("", "", &opts(&[("pool", "tiny")]), false)
                .await
                .unwrap();
        }
        let e = ipam
            .request_pool("", "", &opts(&[("pool", "tiny")]), false)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool tiny (10.9.0.0/23) has no free /24 subnet left"
        );
        let e = ipam.remove_pool("tiny").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool tiny is in use by 2 subnet(s): 10.9.0.0/24, 10.9.1.0/24"
        );
    });
}

#[test]
fn user_subnets_follow_the_overlap_rules() {
    rt().block_on(async {
        let ipam = ipam().await;
        ipam.request_pool("192.168.2.0/24", "", &opts(&[("pool", "nat")]), false).await.unwrap();
        let e = ipam
            .request_pool("192.168.2.128/25", "", &opts(&[("pool", "nonat")]), false)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 192.168.2.128/25 overlaps 192.168.2.0/24, already used by a nat or nonat network"
        );
        ipam.request_pool("192.168.2.0/24", "", &opts(&[("pool", "vxlan"), ("vni", "5001")]), false)
            .await
            .unwrap();
        ipam.request_pool("192.168.2.0/24", "", &opts(&[("pool", "vxlan"), ("vni", "5002")]), false)
            .await
            .unwrap();
        let e = ipam
            .request_pool("10.1.0.0/24", "10.2.0.0/25", &opts(&[]), false)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "ip-range 10.2.0.0/25 is not inside subnet 10.1.0.0/24");
        let e = ipam.request_pool("", "", &opts(&[("pool", "nope")]), false).await.unwrap_err();
        assert_eq!(e.to_string(), "unknown pool \"nope\" (pools: nat, nonat, flat, vlan, vxlan)");
        let e = ipam.request_pool("", "", &opts(&[("colour", "red")]), false).await.unwrap_err();
        assert_eq!(e.to_string(), "unknown ipam option \"colour\" (valid options: pool, vni)");
    });
}

#[test]
fn addresses_gateway_static_and_range() {
    rt().block_on(async {
        let ipam = ipam().await;
        let s = ipam
            .request_pool("192.168.5.0/24", "192.168.5.128/25", &opts(&[]), false)
            .await
            .unwrap();
        let gw = ipam.request_address(&s.id, "", true).await.unwrap();
        assert_eq!(gw.to_string(), "192.168.5.1/24");
        let a = ipam.request_address(&s.id, "", false).await.unwrap();
        assert_eq!(a.to_string(), "192.168.5.128/24");
        let st = ipam
            .request_address(&s.id, "192.168.5.10", false)
            .await
            .unwrap();
        assert_eq!(st.to_string(), "192.168.5.10/24");
        let e = ipam
            .request_address(&s.id, "192.168.5.10", false)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 192.168.5.10 is already in use in subnet 192.168.5.0/24"
        );
        let e = ipam
            .request_address(&s.id, "10.0.0.1", false)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.0.0.1 is not in subnet 192.168.5.0/24"
        );
        let e = ipam
            .request_address(&s.id, "192.168.5.255", false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reserved"));
        let e = ipam
            .request_address(&s.id, "10.0.0.1", true)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "gateway 10.0.0.1 is not in subnet 192.168.5.0/24"
        );
        ipam.release_address(&s.id, "192.168.5.128").await.unwrap();
        let again = ipam.request_address(&s.id, "", false).await.unwrap();
        assert_eq!(again, a);
        ipam.release_address(&s.id, "192.168.5.77").await.unwrap();
        ipam.release_address("ql/host/1.2.3.0/24", "1.2.3.4")
            .await
            .unwrap();
        let e = ipam.request_address("bogus", "", false).await.unwrap_err();
        assert_eq!(e.to_string(), "unknown pool id \"bogus\"");
    });
}

#[test]
fn small_range_exhausts() {
    rt().block_on(async {
        let ipam = ipam().await;
        let s = ipam
            .request_pool("10.7.0.0/24", "10.7.0.8/30", &opts(&[]), false)
            .await
            .unwrap();
        for _ in 0..4 {
            ipam.request_address(&s.id, "", false).await.unwrap();
        }
        let e = ipam.request_address(&s.id, "", false).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free address left in ip-range 10.7.0.8/30 of 10.7.0.0/24"
        );
    });
}

#[test]
fn concurrent_requests_never_duplicate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ipam = Arc::new(ipam().await);
        let s = ipam
            .request_pool("10.8.0.0/24", "", &opts(&[]), false)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (ipam, id) = (ipam.clone(), s.id.clone());
                tokio::spawn(async move { ipam.request_address(&id, "", false).await.unwrap() })
            })
            .collect();
        let mut seen = BTreeSet::new();
        for t in tasks {
            assert!(seen.insert(t.await.unwrap()));
        }
        assert_eq!(seen.len(), 100);
    });
}

#[derive(Clone, Debug)]
enum Step {
    Allocate,
    Release(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn interleavings_never_duplicate_or_lose(steps in prop::collection::vec(
        prop_oneof![Just(Step::Allocate), (0usize..64).prop_map(Step::Release)], 1..120)) {
        rt().block_on(async {
            let ipam = ipam().await;
            let s = ipam.request_pool("10.6.0.0/26", "", &opts(&[]), false).await.unwrap();
            let mut held: Vec<IpAddr> = Vec::new();
            for step in steps {
                match step {
                    Step::Allocate => match ipam.request_address(&s.id, "", false).await {
                        Ok(a) => {
                            prop_assert!(!held.contains(&a.addr()), "duplicate {}", a);
                            held.push(a.addr());
                        }
                        Err(IpamError::NoFreeAddress { .. }) => prop_assert_eq!(held.len(), 62),
                        Err(e) => panic!("{e}"),
                    },
                    Step::Release(i) if !held.is_empty() => {
                        let ip = held.remove(i % held.len());
                        ipam.release_address(&s.id, &ip.to_string()).await.unwrap();
                    }
                    Step::Release(_) => {}
                }
                let stored: BTreeSet<IpAddr> = ipam.addresses(&s).await.unwrap().into_iter().map(|a| a.ip).collect();
                let mine: BTreeSet<IpAddr> = held.iter().copied().collect();
                prop_assert_eq!(stored, mine);
            }
            Ok(())
        })?;
    }
}

/// Two hosts: each its own local store, one shared cluster store.
async fn two_hosts() -> (Ipam, Ipam) {
    two_hosts_on(Arc::new(MemoryStore::new())).await
}

async fn two_hosts_on(cluster: Arc<dyn qingluan_store::Store>) -> (Ipam, Ipam) {
    (
        host_on(Arc::new(MemoryStore::new()), cluster.clone(), "h1").await,
        host_on(Arc::new(MemoryStore::new()), cluster, "h2").await,
    )
}

/// Host `id`'s IPAM on its `local` store and the shared `cluster` store, seeded.
async fn host_on(
    local: Arc<dyn qingluan_store::Store>,
    cluster: Arc<dyn qingluan_store::Store>,
    id: &str,
) -> Ipam {
    let ipam = Ipam::lazy(local, cluster, id, &IpamSettings::default(), no_routes).unwrap();
    ipam.seed().await.unwrap();
    ipam
}

#[test]
fn cluster_domains_are_shared_and_joined() {
    rt().block_on(async {
        let (a, b) = two_hosts().await;
        let vx = opts(&[("pool", "vxlan"), ("vni", "5001")]);
        let s = a.request_pool("", "", &vx, false).await.unwrap();
        let gw = a.request_address(&s.id, "", true).await.unwrap();
        // Another host joins with the same definition, or with none: same subnet, and
        // asking for the network's gateway again is fine there.
        let joined = b.request_pool("", "", &vx, false).await.unwrap();
        assert_eq!(joined.id, s.id);
        let same = b.request_pool(&s.cidr.to_string(), "", &vx, false).await.unwrap();
        assert_eq!(same.id, s.id);
        assert_eq!(b.request_address(&s.id, &gw.addr().to_string(), true).await.unwrap(), gw);
        let e = b.request_pool("10.50.0.0/24", "", &vx, false).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("vxlan-5001 already has subnet {}: a network joining it must use that subnet (or omit --subnet)", s.cidr)
        );
        // Another VNI carves a distinct subnet; local nat pools stay per host.
        let other = a
            .request_pool("", "", &opts(&[("pool", "vxlan"), ("vni", "5002")]), false)
            .await
            .unwrap();
        assert_ne!(other.cidr, s.cidr);
        let na = a.request_pool("", "", &opts(&[("pool", "nat")]), false).await.unwrap();
        let nb = b.request_pool("", "", &opts(&[("pool", "nat")]), false).await.unwrap();
        assert_eq!(na.cidr, nb.cidr, "host domains are independent");
    });
}

#[test]
fn cluster_addresses_are_unique_and_owned() {
    rt().block_on(async {
        let (a, b) = two_hosts().await;
        let vx = opts(&[("pool", "vxlan"), ("vni", "7")]);
        let s = a.request_pool("", "", &vx, false).await.unwrap();
        b.request_pool("", "", &vx, false).await.unwrap();
        let gw = a.request_address(&s.id, "", true).await.unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let ipam = if i % 2 == 0 { a.clone() } else { b.clone() };
            let id = s.id.clone();
            tasks.push(tokio::spawn(async move {
                ipam.request_address(&id, "", false).await.unwrap()
            }));
        }
        let mut seen = BTreeSet::new();
        for t in tasks {
            assert!(seen.insert(t.await.unwrap()), "duplicate address");
        }
        assert!(!seen.contains(&gw));
        let mine = *seen.iter().next().unwrap();
        let holder = a.claim(&s.id, mine.addr()).await.unwrap();
        let other = if holder == Claim::Held { &b } else { &a };
        // The other host can neither release nor claim it.
        other
            .release_address(&s.id, &mine.addr().to_string())
            .await
            .unwrap();
        assert!(matches!(
            other.claim(&s.id, mine.addr()).await.unwrap(),
            Claim::HeldBy(_)
        ));
        // Releasing the gateway from a host that leaves keeps it for the network.
        b.release_address(&s.id, &gw.addr().to_string())
            .await
            .unwrap();
        assert_eq!(
            a.addresses(&a.subnet(&s.id).await.unwrap())
                .await
                .unwrap()
                .len(),
            41
        );
        // A freed address is taken again by the host that claims it.
        let owner = if holder == Claim::Held { &a } else { &b };
        owner
            .release_address(&s.id, &mine.addr().to_string())
            .await
            .unwrap();
        assert_eq!(other.claim(&s.id, mine.addr()).await.unwrap(), Claim::Taken);
    });
}

#[test]
fn cluster_subnet_stays_while_its_network_exists() {
    rt().block_on(async {
        let cluster: Arc<dyn qingluan_store::Store> = Arc::new(MemoryStore::new());
        let a = host_on(Arc::new(MemoryStore::new()), cluster.clone(), "h1").await;
        let s = a
            .request_pool("", "", &opts(&[("pool", "vxlan"), ("vni", "9")]), false)
            .await
            .unwrap();
        let net = format!("{}vxlan-9", crate::cluster::NETWORKS);
        qingluan_store::put(&*cluster, &net, b"{}".to_vec())
            .await
            .unwrap();
        a.release_pool(&s.id).await.unwrap();
        assert!(
            a.subnet(&s.id).await.is_ok(),
            "another host still has the network"
        );
        qingluan_store::delete(&*cluster, &net).await.unwrap();
        a.release_pool(&s.id).await.unwrap();
        assert!(a.subnet(&s.id).await.is_err());
    });
}

#[test]
fn host_offsets_wrap_within_the_scope() {
    let cidr: IpNet = "10.9.0.0/29".parse().unwrap();
    let taken: BTreeSet<IpAddr> = ["10.9.0.6".parse().unwrap()].into();
    let at = |start| free_from(cidr, cidr, &taken, start).map(|ip| ip.to_string());
    assert_eq!(at(0).as_deref(), Some("10.9.0.1"));
    assert_eq!(at(5).as_deref(), Some("10.9.0.5"));
    // .6 is taken, .7 is the broadcast address: wrap to the start.
    assert_eq!(at(6).as_deref(), Some("10.9.0.1"));
    assert_eq!(at(8 + 3).as_deref(), Some("10.9.0.3"));
    assert_ne!(host_offset("h1"), host_offset("h2"));
}

/// Dynamic addresses of `n` requests.
async fn allocate(ipam: &Ipam, id: &str, n: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(ipam.request_address(id, "", false).await.unwrap().addr());
    }
    out
}

/// Two hosts on one cluster store, both with the subnet of vxlan VNI `vni` (`subnet` and
/// `range` as `docker network create` gives them).
async fn shared(
    vni: u32,
    subnet: &str,
    range: &str,
) -> (Arc<dyn qingluan_store::Store>, Ipam, Ipam, Subnet) {
    let cluster: Arc<dyn qingluan_store::Store> = Arc::new(MemoryStore::new());
    let (a, b) = two_hosts_on(cluster.clone()).await;
    let vx = opts(&[("pool", "vxlan"), ("vni", &vni.to_string())]);
    let s = a.request_pool(subnet, range, &vx, false).await.unwrap();
    b.request_pool("", range, &vx, false).await.unwrap();
    (cluster, a, b, s)
}

/// The blocks of the cluster store: block and host.
async fn blocks(cluster: &dyn qingluan_store::Store) -> Vec<(IpNet, String)> {
    qingluan_store::list_json::<Block>(cluster, BLOCKS)
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.cidr, b.host))
        .collect()
}

#[test]
fn hosts_allocate_from_their_own_blocks() {
    rt().block_on(async {
        let (cluster, a, b, s) = shared(11, "10.50.0.0/24", "").await;
        a.request_address(&s.id, "", true).await.unwrap();
        let of_a = allocate(&a, &s.id, 3).await;
        let of_b = allocate(&b, &s.id, 3).await;
        let held = blocks(&*cluster).await;
        assert_eq!(held.len(), 2, "{held:?}");
        let block_of = |ip: &IpAddr| held.iter().find(|(c, _)| c.contains(ip)).unwrap();
        assert!(of_a.iter().all(|ip| block_of(ip).1 == "h1"), "{of_a:?}");
        assert!(of_b.iter().all(|ip| block_of(ip).1 == "h2"), "{of_b:?}");
        // Within its block a host hands out the lowest free address, and a released one
        // comes back first.
        assert!(of_a.windows(2).all(|w| w[0] < w[1]));
        a.release_address(&s.id, &of_a[0].to_string())
            .await
            .unwrap();
        assert_eq!(allocate(&a, &s.id, 1).await, vec![of_a[0]]);
        // A full block makes the host claim another.
        let (mine, _) = held.iter().find(|(_, h)| h == "h1").unwrap();
        let room = (0..64)
            .filter_map(|n| nth_host(*mine, n))
            .filter(|ip| usable(s.cidr, *ip))
            .count();
        let gateway_here = usize::from(mine.contains(&first_host(s.cidr).unwrap()));
        allocate(&a, &s.id, room - gateway_here - 3).await;
        let next = allocate(&a, &s.id, 1).await[0];
        assert!(!mine.contains(&next));
        let held = blocks(&*cluster).await;
        assert_eq!(
            held.iter().filter(|(_, h)| h == "h1").count(),
            2,
            "{held:?}"
        );
    });
}

#[test]
fn a_claimed_out_subnet_is_borrowed_from_without_duplicates() {
    rt().block_on(async {
        let (cluster, a, b, s) = shared(12, "10.51.0.0/27", "").await;
        let gw = a.request_address(&s.id, "", true).await.unwrap().addr();
        // The /27 is one block; h1 claims it, h2 borrows from it.
        let mut seen: BTreeSet<IpAddr> = allocate(&a, &s.id, 2).await.into_iter().collect();
        // h2 takes the address h1 would hand out next, as a static one: h1 skips it.
        let next = nth_host(s.cidr, 4).unwrap();
        b.request_address(&s.id, &next.to_string(), false)
            .await
            .unwrap();
        seen.insert(next);
        let after = allocate(&a, &s.id, 1).await[0];
        assert_ne!(after, next);
        seen.insert(after);
        for i in 0.. {
            let ipam = if i % 2 == 0 { &b } else { &a };
            match ipam.request_address(&s.id, "", false).await {
                Ok(ip) => assert!(seen.insert(ip.addr()), "duplicate {ip}"),
                Err(IpamError::NoFreeAddress { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!seen.contains(&gw));
        assert_eq!(seen.len(), 29, "every usable address but the gateway");
        assert_eq!(blocks(&*cluster).await, vec![(s.cidr, "h1".to_string())]);
    });
}

#[test]
fn blocks_stay_in_the_range_and_go_with_their_host_or_domain() {
    rt().block_on(async {
        let (cluster, a, b, s) = shared(13, "10.52.0.0/16", "10.52.7.0/25").await;
        let range: IpNet = "10.52.7.0/25".parse().unwrap();
        let got: Vec<IpAddr> =
            [allocate(&a, &s.id, 5).await, allocate(&b, &s.id, 5).await].concat();
        assert!(got.iter().all(|ip| range.contains(ip)), "{got:?}");
        assert_eq!(blocks(&*cluster).await.len(), 2);
        // A dead host's blocks are released; the live host can claim them.
        assert_eq!(a.release_blocks_of("h2").await.unwrap(), 1);
        assert_eq!(blocks(&*cluster).await.len(), 1);
        allocate(&a, &s.id, 70).await;
        assert_eq!(blocks(&*cluster).await.len(), 2);
        a.drop_domain("vxlan-13").await.unwrap();
        assert!(blocks(&*cluster).await.is_empty());
    });
}

#[test]
fn addresses_others_took_in_a_block_are_skipped_and_read_back() {
    rt().block_on(async {
        let (_, a, b, s) = shared(14, "10.53.0.0/24", "").await;
        let first = allocate(&a, &s.id, 1).await[0];
        let after = |n: u32| match first {
            IpAddr::V4(v) => IpAddr::V4((u32::from(v) + n).into()),
            IpAddr::V6(_) => unreachable!("an IPv4 subnet"),
        };
        // h2 takes the next 20 addresses of h1's block as static ones; h1's cache does not
        // know them, and skips them without failing.
        for n in 1..=20 {
            b.request_address(&s.id, &after(n).to_string(), false)
                .await
                .unwrap();
        }
        assert_eq!(allocate(&a, &s.id, 2).await, vec![after(21), after(22)]);
    });
}

#[test]
fn a_host_leaving_a_network_others_keep_gives_its_blocks_back() {
    rt().block_on(async {
        let (cluster, a, b, s) = shared(15, "10.54.0.0/24", "").await;
        allocate(&a, &s.id, 1).await;
        allocate(&b, &s.id, 1).await;
        let net = format!("{}vxlan-15", crate::cluster::NETWORKS);
        qingluan_store::put(&*cluster, &net, b"{}".to_vec())
            .await
            .unwrap();
        a.release_pool(&s.id).await.unwrap();
        let held = blocks(&*cluster).await;
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1, "h2");
        // h1 joins again; the network is then removed and made again with a range at
        // once: h1's cache of the old subnet is no guide.
        allocate(&a, &s.id, 1).await;
        b.drop_domain("vxlan-15").await.unwrap();
        // Meanwhile h1's cache still holds the subnet: its create checks the subnet's
        // record, fails, and writes nothing.
        assert!(matches!(
            a.request_address(&s.id, "", false).await,
            Err(IpamError::UnknownPoolId(_))
        ));
        assert!(cluster.list(ADDRS).await.unwrap().is_empty());
        let vx = opts(&[("pool", "vxlan"), ("vni", "15")]);
        let s = b
            .request_pool("10.54.0.0/24", "10.54.0.192/26", &vx, false)
            .await
            .unwrap();
        let range: IpNet = "10.54.0.192/26".parse().unwrap();
        let got = [allocate(&a, &s.id, 3).await, allocate(&b, &s.id, 3).await].concat();
        assert!(got.iter().all(|ip| range.contains(ip)), "{got:?}");
    });
}

#[test]
fn a_binding_writes_what_comes_with_it_in_the_same_transaction() {
    rt().block_on(async {
        let store = Arc::new(MemoryStore::new());
        let ipam = ipam_on(store.clone()).await;
        let s = ipam
            .request_pool("192.168.6.0/24", "", &opts(&[]), false)
            .await
            .unwrap();
        let ip = ipam.request_address(&s.id, "", false).await.unwrap().addr();
        let put = |k: &str| vec![Op::Put(k.to_string(), b"{}".to_vec())];
        ipam.bind(&s.id, ip, "ep1", put("r1")).await.unwrap();
        assert!(store.get("r1").await.unwrap().is_some(), "one transaction");
        ipam.bind(&s.id, ip, "ep1", put("r2")).await.unwrap();
        assert!(store.get("r2").await.unwrap().is_some(), "bound already");
        let e = ipam.bind(&s.id, ip, "ep2", put("r3")).await.unwrap_err();
        assert!(matches!(e, IpamError::AddressInUse { .. }), "{e}");
        assert!(
            store.get("r3").await.unwrap().is_none(),
            "refused: nothing written"
        );

        let (cluster, a, _b, s) = shared(16, "10.55.0.0/24", "").await;
        let ip = a.request_address(&s.id, "", false).await.unwrap().addr();
        a.bind(&s.id, ip, "ep1", put("r4")).await.unwrap();
        assert!(
            cluster.get("r4").await.unwrap().is_some(),
            "in the cluster store, with the binding"
        );
        let e = a.bind(&s.id, ip, "ep2", put("r5")).await.unwrap_err();
        assert!(matches!(e, IpamError::AddressInUse { .. }), "{e}");
        assert!(
            cluster.get("r5").await.unwrap().is_none(),
            "refused: nothing written"
        );
    });
}

#[test]
fn concurrent_bindings_of_one_address_leave_one_endpoint_bound() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let ipam = Arc::new(ipam_on(store.clone()).await);
        let s = ipam
            .request_pool("192.168.7.0/24", "", &opts(&[]), false)
            .await
            .unwrap();
        let ip = ipam.request_address(&s.id, "", false).await.unwrap().addr();
        let binds: Vec<_> = (0..16)
            .map(|i| {
                let (ipam, id) = (ipam.clone(), s.id.clone());
                tokio::spawn(async move {
                    let rec = vec![Op::Put(format!("rec{i}"), b"{}".to_vec())];
                    ipam.bind(&id, ip, &format!("ep{i}"), rec).await
                })
            })
            .collect();
        let mut bound = Vec::new();
        for (i, b) in binds.into_iter().enumerate() {
            match b.await.unwrap() {
                Ok(_) => bound.push(i),
                Err(IpamError::AddressInUse { .. }) => {}
                Err(e) => panic!("only AddressInUse may refuse: {e}"),
            }
        }
        assert_eq!(bound.len(), 1, "exactly one binding wins: {bound:?}");
        for i in 0..16 {
            assert_eq!(
                store.get(&format!("rec{i}")).await.unwrap().is_some(),
                bound == [i],
                "only the winner's record is written"
            );
        }
    });
}

/// A store that counts its reads.
struct Counting {
    inner: MemoryStore,
    gets: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    async fn get(&self, key: &str) -> Result<Option<qingluan_store::KeyValue>, StoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<qingluan_store::KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(
        &self,
        compares: Vec<qingluan_store::Compare>,
        ops: Vec<Op>,
    ) -> Result<qingluan_store::TxnResult, StoreError> {
        self.inner.txn(compares, ops).await
    }
    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<qingluan_store::WatchEvent>, StoreError> {
        self.inner.watch(prefix).await
    }
    async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        self.inner.grant(ttl_secs).await
    }
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }
}

#[test]
fn a_cluster_binding_compares_with_what_the_allocation_wrote() {
    rt().block_on(async {
        let cluster = Arc::new(Counting {
            inner: MemoryStore::new(),
            gets: Default::default(),
        });
        let (a, b) = two_hosts_on(cluster.clone()).await;
        let vx = opts(&[("pool", "vxlan"), ("vni", "17")]);
        let s = a
            .request_pool("10.56.0.0/24", "", &vx, false)
            .await
            .unwrap();
        b.request_pool("", "", &vx, false).await.unwrap();
        let ip = a.request_address(&s.id, "", false).await.unwrap().addr();
        let before = cluster.gets();
        a.bind(&s.id, ip, "ep1", vec![]).await.unwrap();
        assert_eq!(cluster.gets(), before, "bound without reading the record");
        let key = format!("{}{ip}", addrs_prefix("vxlan-17", s.cidr));
        let bound: Addr = qingluan_store::get_json(&*cluster, &key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bound.endpoint.as_deref(), Some("ep1"));
        // The record changed after the allocation wrote it (another host reclaimed the
        // address and handed it back, say): the swap fails, and the binding reads it.
        let ip = a.request_address(&s.id, "", false).await.unwrap().addr();
        let key = format!("{}{ip}", addrs_prefix("vxlan-17", s.cidr));
        let changed = Addr {
            since: 1,
            ..qingluan_store::get_json(&*cluster, &key)
                .await
                .unwrap()
                .unwrap()
        };
        qingluan_store::put(&*cluster, &key, qingluan_store::to_json(&changed))
            .await
            .unwrap();
        a.bind(&s.id, ip, "ep2", vec![]).await.unwrap();
        let bound: Addr = qingluan_store::get_json(&*cluster, &key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((bound.endpoint.as_deref(), bound.since), (Some("ep2"), 1));
    });
}

/// A cluster CreateEndpoint writes its record before it binds the address; when it stopped
/// in between, Docker's ReleaseAddress must not free an address that record still uses.
#[test]
fn a_release_keeps_a_cluster_address_an_endpoint_record_uses() {
    rt().block_on(async {
        use crate::fixtures;
        use crate::model::{Endpoint, Mode};
        let (local, cluster) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
        let a = host_on(local.clone(), cluster.clone(), "h1").await;
        let vx = opts(&[("pool", "vxlan"), ("vni", "19")]);
        let s = a
            .request_pool("10.57.0.0/24", "", &vx, false)
            .await
            .unwrap();
        let ip = a.request_address(&s.id, "", false).await.unwrap();
        let mut n = fixtures::net("n1", Mode::Vxlan, "10.57.0.0/24");
        n.cluster = Some("vxlan-19".into());
        let mut e = fixtures::ep("e1", &n, 1, "c1");
        e.address = match ip {
            IpNet::V4(v4) => v4,
            IpNet::V6(_) => unreachable!("an IPv4 pool"),
        };
        local
            .txn(
                vec![],
                vec![crate::records::put(&n), crate::records::put(&e)],
            )
            .await
            .unwrap();
        let key = format!("{}{}", addrs_prefix("vxlan-19", s.cidr), ip.addr());
        a.release_address(&s.id, &ip.to_string()).await.unwrap();
        assert!(cluster.get(&key).await.unwrap().is_some(), "kept");
        local
            .txn(vec![], vec![crate::records::delete::<Endpoint>("e1")])
            .await
            .unwrap();
        a.release_address(&s.id, &ip.to_string()).await.unwrap();
        assert!(cluster.get(&key).await.unwrap().is_none(), "freed");
    });
}
