//! Replays a JSON Lines order stream through the matcher.
//!
//! ```text
//! cargo run --release -p orderbook-core --example replay -- --tick 0.01 --lot 0.0001 < orders.jsonl
//! ```
//!
//! Every input line is a command, every output line an event; the format is
//! documented in the crate docs (`orderbook_core`, section "The `replay`
//! example"). All orders share one owner and one market and are placed with
//! self-trade prevention off, so they trade with each other.

use std::io::{self, BufRead, BufWriter, Read, Write};
use std::process::ExitCode;

use orderbook_core::{
    CancelReason, Command, Event, Exchange, MarketSpec, NewOrder, OrderId, OrderType, OwnerId,
    RejectReason, SelfTradePrevention, Side, TimeInForce,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The longest input line accepted; longer lines are reported and skipped.
const MAX_LINE: u64 = 64 * 1024;
const MARKET: &str = "REPLAY";
const OWNER: OwnerId = OwnerId(1);

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Input {
    Place {
        id: OrderId,
        side: Side,
        #[serde(rename = "type")]
        order_type: OrderType,
        price: Option<Decimal>,
        quantity: Decimal,
        time_in_force: Option<TimeInForce>,
    },
    Cancel {
        id: OrderId,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("replay: {message}");
            eprintln!("usage: replay --tick <decimal> --lot <decimal> < commands.jsonl");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut tick, mut lot) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<Decimal>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--tick" => tick = Some(value("--tick")?),
            "--lot" => lot = Some(value("--lot")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let (Some(tick), Some(lot)) = (tick, lot) else {
        return Err("--tick and --lot are required".into());
    };
    let mut exchange =
        Exchange::new(vec![MarketSpec::new(MARKET, tick, lot)]).map_err(|e| e.to_string())?;

    let mut input = io::stdin().lock();
    let mut out = BufWriter::new(io::stdout().lock());
    let mut line = Vec::new();
    let mut events = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = (&mut input)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') && read as u64 == MAX_LINE {
            // Skip the rest of an overlong line without buffering it.
            loop {
                let buf = input.fill_buf().map_err(|e| e.to_string())?;
                if buf.is_empty() {
                    break;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        input.consume(i + 1);
                        break;
                    }
                    None => {
                        let n = buf.len();
                        input.consume(n);
                    }
                }
            }
            emit(
                &mut out,
                &Output::Error {
                    line: number,
                    message: "line too long".into(),
                },
            )?;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let cmd = match serde_json::from_slice::<Input>(&line) {
            Ok(input) => command(input),
            Err(e) => {
                emit(
                    &mut out,
                    &Output::Error {
                        line: number,
                        message: e.to_string(),
                    },
                )?;
                continue;
            }
        };
        events.clear();
        exchange.execute_into(cmd, &mut events);
        for event in &events {
            emit(&mut out, &render(event))?;
        }
    }
    let depth = exchange
        .market(MARKET)
        .map(|b| b.depth(usize::MAX))
        .unwrap_or_default();
    let side = |levels: &[(Decimal, Decimal)]| -> Vec<[String; 2]> {
        levels.iter().map(|(p, q)| [n(p), n(q)]).collect()
    };
    emit(
        &mut out,
        &Output::Book {
            bids: side(&depth.bids),
            asks: side(&depth.asks),
        },
    )?;
    out.flush().map_err(|e| e.to_string())
}

fn command(input: Input) -> Command {
    match input {
        Input::Place {
            id,
            side,
            order_type,
            price,
            quantity,
            time_in_force,
        } => Command::Place(NewOrder {
            id,
            owner: OWNER,
            market: MARKET.into(),
            side,
            order_type,
            price,
            quantity,
            time_in_force: time_in_force.unwrap_or(match order_type {
                OrderType::Limit => TimeInForce::Gtc,
                OrderType::Market => TimeInForce::Ioc,
            }),
            stp: SelfTradePrevention::None,
        }),
        Input::Cancel { id } => Command::Cancel { id, owner: OWNER },
    }
}

/// One output line; serde writes the `event` tag first, then the fields in this order.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Output {
    Accepted {
        id: String,
    },
    Trade {
        maker: String,
        taker: String,
        price: String,
        quantity: String,
    },
    Filled {
        id: String,
    },
    Rested {
        id: String,
        price: String,
        quantity: String,
    },
    Cancelled {
        id: String,
        reason: CancelReason,
        remaining: String,
    },
    Rejected {
        id: String,
        reason: RejectReason,
    },
    Error {
        line: u64,
        message: String,
    },
    Book {
        bids: Vec<[String; 2]>,
        asks: Vec<[String; 2]>,
    },
}

/// Decimals are printed normalized: no trailing zeros.
fn n(d: &Decimal) -> String {
    d.normalize().to_string()
}

fn render(event: &Event) -> Output {
    match event {
        Event::Accepted { id } => Output::Accepted { id: id.to_string() },
        Event::Trade {
            maker,
            taker,
            price,
            quantity,
            ..
        } => Output::Trade {
            maker: maker.to_string(),
            taker: taker.to_string(),
            price: n(price),
            quantity: n(quantity),
        },
        Event::Filled { id } => Output::Filled { id: id.to_string() },
        Event::Rested {
            id,
            price,
            quantity,
        } => Output::Rested {
            id: id.to_string(),
            price: n(price),
            quantity: n(quantity),
        },
        Event::Cancelled {
            id,
            reason,
            remaining,
        } => Output::Cancelled {
            id: id.to_string(),
            reason: *reason,
            remaining: n(remaining),
        },
        Event::Rejected { id, reason } => Output::Rejected {
            id: id.to_string(),
            reason: *reason,
        },
    }
}

fn emit(out: &mut impl Write, value: &Output) -> Result<(), String> {
    serde_json::to_writer(&mut *out, value).map_err(|e| e.to_string())?;
    out.write_all(b"\n").map_err(|e| e.to_string())
}
