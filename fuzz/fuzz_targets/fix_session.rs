//! What a FIX counterparty sends, as the FIX venue takes it: bytes in chunks of any size (the
//! first byte of each chunk gives the next one's length) after a Logon, acted on by the session
//! (sequence numbers, gaps, resends, resets, logout) and the venue (reports, refusals, status
//! answers) with two orders working. Nothing panics, and the venue never reports on an order it
//! was not handed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::engine::order::{Order, OrderStatus};
use signalgate::engine::symbol::SymbolSpec;
use signalgate::engine::types::{AccountId, OrderId, OrderType, Side, SymbolId, Tif};
use signalgate::venue::fix::session::SessionConfig;
use signalgate::venue::{Execution, FixSettings, FixVenue, Venue};

const T0: u64 = 1_796_660_914_500_000_000;

fuzz_target!(|data: &[u8]| {
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
    let mut out = Vec::new();
    venue.connected(T0);
    let order = |id: u64, status| Order {
        id: OrderId(id),
        account: AccountId(1),
        symbol: SymbolId(0),
        side: Side::Buy,
        order_type: OrderType::Limit,
        tif: Tif::Gtc,
        qty: 100,
        filled_qty: 0,
        filled_notional: 0,
        limit_price: 6_500_000,
        status,
        strategy: Default::default(),
        created_at: T0,
        updated_at: T0,
    };
    venue.recover(&order(1, OrderStatus::New), &spec, None, T0, &mut out);
    venue.recover(&order(2, OrderStatus::PendingNew), &spec, None, T0, &mut out);
    let mut rest = data;
    let mut now = T0;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        venue.received(&tail[..n]);
        rest = &tail[n..];
        now += 1_000_000_000;
        venue.poll(now, &mut out);
        if venue.broken() {
            venue.disconnected();
            venue.connected(now);
        }
        venue.output().clear();
        for e in out.drain(..) {
            match e {
                Execution::Ack { order }
                | Execution::Fill { order, .. }
                | Execution::Canceled { order }
                | Execution::Rejected { order, .. }
                | Execution::Expired { order } => assert!(order.0 == 1 || order.0 == 2, "{e:?}"),
                Execution::Session { inbound, outbound } => assert!(inbound >= 1 && outbound >= 1),
            }
        }
    }
});
