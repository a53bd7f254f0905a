//! DNS roles: a test server that answers after a chosen delay (and reports
//! how long it held each query), a sender of raw bytes to a DNS port, and a
//! paced load generator. Messages are parsed and built with hickory-proto, an
//! implementation independent of the agent's decoder.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{
        rdata::{A, AAAA},
        RData, Record, RecordType,
    },
};
use serde_json::json;

/// What the server answers: name -> addresses; other names get NXDOMAIN.
#[derive(Clone, Default)]
pub struct Zone(HashMap<String, Vec<IpAddr>>);

impl Zone {
    /// From "name=ip" pairs.
    pub fn parse(records: &[String]) -> Result<Self> {
        let mut z = HashMap::<String, Vec<IpAddr>>::new();
        for r in records {
            let (name, ip) = r.split_once('=').with_context(|| format!("record {r:?} is not name=ip"))?;
            let ip: IpAddr = ip.parse().with_context(|| format!("record {r:?}: bad address"))?;
            z.entry(name.trim_end_matches('.').to_ascii_lowercase()).or_default().push(ip);
        }
        Ok(Self(z))
    }

    fn answer(&self, query: &Message) -> Message {
        let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
        resp.metadata.recursion_desired = query.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(query.queries.iter().cloned());
        let Some(q) = query.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        match self.0.get(&name) {
            None => resp.metadata.response_code = ResponseCode::NXDomain,
            Some(ips) => {
                for ip in ips {
                    let data = match (ip, q.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    resp.add_answer(Record::from_rdata(q.name().clone(), 300, data));
                }
            }
        }
        resp
    }
}

fn print_line(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Answers UDP and TCP on `listen` after `delay`, ignoring the first `drop`
/// queries (so clients time out or retry). Prints one line per query.
pub fn server(listen: SocketAddr, delay: Duration, drop: u64, zone: Zone) -> Result<()> {
    let udp = Arc::new(UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?);
    let tcp = TcpListener::bind(listen).with_context(|| format!("binding TCP {listen}"))?;
    print_line(json!({"listening": listen.to_string()}));
    let dropped = Arc::new(AtomicU64::new(0));
    let zone = Arc::new(zone);
    {
        let (dropped, zone) = (dropped.clone(), zone.clone());
        std::thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
                let (dropped, zone) = (dropped.clone(), zone.clone());
                std::thread::spawn(move || {
                    let _ = serve_tcp(conn, delay, drop, &dropped, &zone);
                });
            }
        });
    }
    let mut buf = [0u8; 4096];
    super::rxts::enable(udp.as_raw_fd())?;
    loop {
        let (n, from, rx) = super::rxts::recv(udp.as_raw_fd(), &mut buf)?;
        let received = Instant::now();
        let Some(from) = from else { continue };
        if dropped.fetch_add(1, Ordering::SeqCst) < drop {
            print_line(json!({"proto": "udp", "dropped": true}));
            continue;
        }
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            print_line(json!({"proto": "udp", "malformed": n}));
            continue;
        };
        let (udp, zone) = (udp.clone(), zone.clone());
        std::thread::spawn(move || {
            let reply = zone.answer(&query).to_vec().unwrap_or_default();
            std::thread::sleep(delay.saturating_sub(super::rxts::since(rx, received)));
            let held = super::rxts::since(rx, received);
            let _ = udp.send_to(&reply, from);
            print_line(
                json!({"proto": "udp", "id": query.metadata.id, "name": name_of(&query), "held_ns": held.as_nanos() as u64}),
            );
        });
    }
}

fn name_of(m: &Message) -> String {
    m.queries.first().map(|q| q.name().to_ascii().trim_end_matches('.').to_string()).unwrap_or_default()
}

fn serve_tcp(mut conn: TcpStream, delay: Duration, drop: u64, dropped: &AtomicU64, zone: &Zone) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    super::rxts::enable(conn.as_raw_fd())?;
    loop {
        let mut len = [0u8; 2];
        let Ok(Some(_)) = super::rxts::read_exact(conn.as_raw_fd(), &mut len) else {
            return Ok(());
        };
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        let Some(rx) = super::rxts::read_exact(conn.as_raw_fd(), &mut msg)? else {
            return Ok(());
        };
        let received = Instant::now();
        if dropped.fetch_add(1, Ordering::SeqCst) < drop {
            print_line(json!({"proto": "tcp", "dropped": true}));
            continue;
        }
        let Ok(query) = Message::from_vec(&msg) else {
            print_line(json!({"proto": "tcp", "malformed": msg.len()}));
            return Ok(());
        };
        let reply = zone.answer(&query).to_vec().unwrap_or_default();
        std::thread::sleep(delay.saturating_sub(super::rxts::since(rx, received)));
        let held = super::rxts::since(rx, received);
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        conn.write_all(&framed)?;
        print_line(
            json!({"proto": "tcp", "id": query.metadata.id, "name": name_of(&query), "held_ns": held.as_nanos() as u64}),
        );
    }
}

/// Sends `payload` to a DNS port, over UDP or one TCP connection (as given:
/// the caller frames it); waits briefly for anything back.
pub fn raw(to: SocketAddr, payload: &[u8], tcp: bool) -> Result<()> {
    if tcp {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.write_all(payload)?;
        s.shutdown(std::net::Shutdown::Write)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        print_line(json!({"sent": payload.len(), "received": sink.len()}));
    } else {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
        let s = UdpSocket::bind(bind)?;
        s.send_to(payload, to)?;
        print_line(json!({"sent": payload.len()}));
    }
    Ok(())
}

/// Sends A queries for `names` (round robin) to `server` at `rate` per second
/// for `seconds` from `sockets` UDP sockets, and counts the answers. Bounded
/// in count (rate x seconds) and time (seconds + 2).
pub fn load(server: SocketAddr, names: &[String], rate: u64, seconds: u64, sockets: usize) -> Result<()> {
    let total = rate * seconds;
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socks: Vec<UdpSocket> = (0..sockets.max(1)).map(|_| UdpSocket::bind(bind)).collect::<std::io::Result<_>>()?;
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds + 2);
    let readers: Vec<_> = socks
        .iter()
        .map(|s| {
            let s = s.try_clone().expect("clone socket");
            let answered = answered.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1500];
                while Instant::now() < deadline {
                    if s.recv(&mut buf).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let queries: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            m.add_query(hickory_proto::op::Query::query(n.parse().expect("a DNS name"), RecordType::A));
            m.to_vec().expect("encodable query")
        })
        .collect();
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if Instant::now() > deadline {
            break;
        }
        let mut q = queries[(i as usize) % queries.len()].clone();
        q[..2].copy_from_slice(&(i as u16).to_be_bytes());
        let _ = socks[(i as usize) % socks.len()].send_to(&q, server);
    }
    let sent_secs = start.elapsed().as_secs_f64();
    for r in readers {
        let _ = r.join();
    }
    let answered = answered.load(Ordering::Relaxed);
    print_line(json!({"sent": total, "answered": answered, "seconds": sent_secs}));
    Ok(())
}
