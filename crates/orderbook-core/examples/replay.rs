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
    replay(
        tick,
        lot,
        io::stdin().lock(),
        BufWriter::new(io::stdout().lock()),
    )
}

/// Replays JSON Lines commands from `input` into JSON Lines events on `out`.
fn replay(
    tick: Decimal,
    lot: Decimal,
    mut input: impl BufRead,
    mut out: impl Write,
) -> Result<(), String> {
    let mut exchange =
        Exchange::new(vec![MarketSpec::new(MARKET, tick, lot)]).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> Vec<String> {
        let mut out = Vec::new();
        let (tick, lot) = (
            "0.01".parse().expect("tick"),
            "0.0001".parse().expect("lot"),
        );
        replay(tick, lot, input.as_bytes(), &mut out).expect("replay");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn replays_the_documented_format() {
        let input = concat!(
            r#"{"op":"place","id":"7","side":"buy","type":"limit","price":"100.25","quantity":"1.5","time_in_force":"gtc"}"#,
            "\n",
            r#"{"op":"place","id":"8","side":"buy","type":"limit","price":"100.30","quantity":"1","time_in_force":"gtc"}"#,
            "\n",
            r#"{"op":"place","id":"9","side":"sell","type":"market","quantity":"1.25"}"#,
            "\n",
            "not json\n",
            "\n",
            r#"{"op":"place","id":"10","side":"sell","type":"limit","price":"100.255","quantity":"1"}"#,
            "\n",
            r#"{"op":"place","id":"11","side":"sell","type":"limit","price":"101","quantity":"2","time_in_force":"post_only"}"#,
            "\n",
            r#"{"op":"cancel","id":"8"}"#,
        );
        let lines = run(input);
        assert_eq!(
            lines,
            [
                r#"{"event":"accepted","id":"7"}"#,
                r#"{"event":"rested","id":"7","price":"100.25","quantity":"1.5"}"#,
                r#"{"event":"accepted","id":"8"}"#,
                r#"{"event":"rested","id":"8","price":"100.3","quantity":"1"}"#,
                r#"{"event":"accepted","id":"9"}"#,
                r#"{"event":"trade","maker":"8","taker":"9","price":"100.3","quantity":"1"}"#,
                r#"{"event":"filled","id":"8"}"#,
                r#"{"event":"trade","maker":"7","taker":"9","price":"100.25","quantity":"0.25"}"#,
                r#"{"event":"filled","id":"9"}"#,
                r#"{"event":"error","line":4,"message":"expected ident at line 1 column 2"}"#,
                r#"{"event":"rejected","id":"10","reason":"off_tick"}"#,
                r#"{"event":"accepted","id":"11"}"#,
                r#"{"event":"rested","id":"11","price":"101","quantity":"2"}"#,
                r#"{"event":"rejected","id":"8","reason":"unknown_order"}"#,
                r#"{"event":"book","bids":[["100.25","1.25"]],"asks":[["101","2"]]}"#,
            ]
        );
    }

    #[test]
    fn one_owner_still_trades_with_itself() {
        let lines = run(concat!(
            r#"{"op":"place","id":"1","side":"sell","type":"limit","price":"1","quantity":"1"}"#,
            "\n",
            r#"{"op":"place","id":"2","side":"buy","type":"limit","price":"1","quantity":"1"}"#,
        ));
        assert!(
            lines.iter().any(|l| l.contains(r#""event":"trade""#)),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some(r#"{"event":"book","bids":[],"asks":[]}"#)
        );
    }

    #[test]
    fn an_overlong_line_is_reported_and_skipped() {
        let long = format!("{}\n", "x".repeat(MAX_LINE as usize * 2));
        let input = format!(
            "{long}{}\n",
            r#"{"op":"place","id":"1","side":"sell","type":"limit","price":"1","quantity":"1"}"#
        );
        let lines = run(&input);
        assert_eq!(
            lines[0],
            r#"{"event":"error","line":1,"message":"line too long"}"#
        );
        assert_eq!(lines[1], r#"{"event":"accepted","id":"1"}"#);
    }
}
