//! The hot path allocates nothing in steady state: a counting allocator watches the thread that
//! serves signals in-process (parse → auth → rate limit → risk → order → paper fill → answer),
//! the FIX codec writing an order and reading an execution report, and the FIX venue doing both
//! for its orders.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../bench/fixture.rs"]
#[allow(dead_code)]
mod fixture;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if WATCHED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only an
// atomic and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    WATCHED.with(|w| w.set(true));
    f();
    WATCHED.with(|w| w.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn signals_allocate_nothing_in_steady_state() {
    let mut f = fixture::Fixture::new(40_000);
    // Warm up: fill the order history, the idempotency store and every buffer to capacity.
    for i in 0..20_000 {
        assert!(matches!(f.signal(i), 200 | 201), "{}", String::from_utf8_lossy(&f.resp.body));
        if i % 1000 == 0 {
            f.quote();
        }
    }
    let mut created = 0;
    let n = counted(|| {
        for i in 20_000..40_000 {
            if f.signal(i) == 201 {
                created += 1;
            }
            if i % 1000 == 0 {
                f.quote();
            }
        }
    });
    assert!(created > 10_000, "the loop really placed orders ({created})");
    assert_eq!(n, 0, "allocations on the signal path in steady state");
    // The counter does see allocations: a guard against a test that cannot fail.
    assert!(counted(|| drop(std::hint::black_box(vec![1u8; 64]))) > 0);
}

#[test]
fn the_fix_codec_allocates_nothing() {
    use signalgate::venue::fix::codec::{frame, Encoder, Message};
    let mut out = Vec::with_capacity(1024);
    let mut report = Vec::new();
    let mut e = Encoder::new(&mut report, b"8");
    e.str(49, "VENUE").str(56, "SG").int(34, 7).timestamp(52, 1_796_660_914_500_000_000);
    e.str(37, "X1").str(11, "42").str(17, "E9").char(150, b'F').char(39, b'2').str(55, "BTCUSD").char(54, b'1');
    e.decimal(38, 5, 1).decimal(32, 5, 1).decimal(31, 6_500_025, 2).decimal(151, 0, 0).decimal(14, 5, 1);
    e.finish();
    let mut checksum = 0i64;
    let mut round = |i: i64| {
        out.clear();
        let mut e = Encoder::new(&mut out, b"D");
        e.str(49, "SG").str(56, "VENUE").int(34, i).timestamp(52, 1_796_660_914_500_000_000 + i as u64);
        e.int(11, i).char(21, b'1').str(55, "BTCUSD").char(54, b'1').timestamp(60, 1_796_660_914_500_000_000);
        e.decimal(38, 5_000 + i, 4).char(40, b'2').decimal(44, 6_500_025, 2).char(59, b'1');
        let n = e.finish();
        let m = Message::parse(&report[..frame(&report).unwrap().unwrap()]).unwrap();
        checksum += m.decimal(31, 2).unwrap().unwrap() + m.uint(34).unwrap().unwrap() as i64 + n as i64;
        checksum += m.timestamp(52).unwrap().unwrap() as i64 % 7 + i64::from(m.char(39).unwrap().unwrap());
    };
    round(0);
    let n = counted(|| (1..10_000).for_each(&mut round));
    assert!(checksum > 0);
    assert_eq!(n, 0, "allocations writing a NewOrderSingle and reading an ExecutionReport");
}

#[test]
fn the_fix_venue_allocates_nothing_per_order() {
    use signalgate::engine::order::{Order, OrderStatus};
    use signalgate::engine::symbol::SymbolSpec;
    use signalgate::engine::types::{AccountId, OrderId, OrderType, Side, SymbolId, Tif};
    use signalgate::venue::fix::codec::Encoder;
    use signalgate::venue::fix::session::SessionConfig;
    use signalgate::venue::{Execution, FixSettings, FixVenue, Venue};
    const T0: u64 = 1_796_660_914_500_000_000;
    let spec = SymbolSpec {
        id: SymbolId(0),
        name: "BTC-USD".into(),
        price_decimals: 2,
        qty_decimals: 4,
        tick: 1,
        lot: 1,
        max_order_qty: 1_000_000,
    };
    let session = SessionConfig {
        sender: "SG".into(),
        target: "VENUE".into(),
        heartbeat: 30_000_000_000,
        logon_timeout: 10_000_000_000,
    };
    let settings = FixSettings { session, account: None, symbols: vec!["XBT/USD".into()] };
    let mut venue = FixVenue::new(settings, std::slice::from_ref(&spec));
    let from_venue = |bytes: &mut Vec<u8>, msg_type: &[u8], seq: i64, body: &dyn Fn(&mut Encoder<'_>)| {
        bytes.clear();
        let mut m = Encoder::new(bytes, msg_type);
        m.str(49, "VENUE").str(56, "SG").int(34, seq).timestamp(52, T0);
        body(&mut m);
        m.finish();
    };
    let mut inbound = Vec::with_capacity(1024);
    let (mut wire, mut orders, mut out) = (Vec::with_capacity(64 * 1024), Vec::with_capacity(1024), Vec::new());
    out.reserve(1024);
    venue.connected(T0);
    from_venue(&mut inbound, b"A", 1, &|m| {
        m.int(98, 0).int(108, 30);
    });
    venue.received(&inbound);
    venue.poll(T0, &mut out);
    let mut filled = 0;
    let mut round = |i: i64| {
        let order = Order {
            id: OrderId(i as u64),
            account: AccountId(1),
            symbol: SymbolId(0),
            side: Side::Buy,
            order_type: OrderType::Market,
            tif: Tif::Ioc,
            qty: 100,
            filled_qty: 0,
            filled_notional: 0,
            limit_price: 0,
            status: OrderStatus::PendingNew,
            strategy: Default::default(),
            created_at: T0,
            updated_at: T0,
        };
        out.clear();
        venue.submit(&order, &spec, None, T0, &mut out);
        wire.clear();
        venue.take_output(&mut wire, &mut orders);
        venue.written(&mut orders, std::time::Instant::now());
        from_venue(&mut inbound, b"8", i + 1, &|m| {
            m.int(11, i).str(17, "E").char(150, b'F').char(39, b'2').str(55, "XBT/USD").char(54, b'1');
            m.decimal(32, 100, 4).decimal(31, 6_500_025, 2).decimal(14, 100, 4).decimal(6, 6_500_025, 2);
        });
        venue.received(&inbound);
        venue.poll(T0, &mut out);
        filled += out.iter().filter(|e| matches!(e, Execution::Fill { .. })).count();
    };
    for i in 1..1_000 {
        round(i);
    }
    let n = counted(|| (1_000..20_000).for_each(&mut round));
    assert_eq!(filled, 19_999, "every order filled");
    assert_eq!(n, 0, "allocations sending a NewOrderSingle and applying its ExecutionReport");
}
