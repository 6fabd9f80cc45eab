//! A small trading client against a running node's HTTP API: the Rust
//! counterpart of the seed's demo client.
//!
//! It shows the markets, places a few resting orders around a mid price and one
//! crossing order, waits (with a deadline) until they settle, prints the book and
//! the latest trades, then cancels what is still open.
//!
//! ```text
//! cargo run -p node --example client -- http://127.0.0.1:8000 [MARKET] [MID]
//! ```

use std::time::{Duration, Instant};

use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let api = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    let market = args.next().unwrap_or_else(|| "BTC-USD".to_owned());
    let mid: i64 = args.next().map_or(Ok(100), |m| m.parse())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let status: Value = http
        .get(format!("{api}/v1/status"))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "node {} · network {} · {} peers · {} members",
        status["node_id"].as_str().unwrap_or("?"),
        status["network_id"].as_str().unwrap_or("?"),
        status["peers"],
        status["members"].as_array().map_or(0, Vec::len)
    );
    let markets: Value = http
        .get(format!("{api}/v1/markets"))
        .send()
        .await?
        .json()
        .await?;
    for m in markets.as_array().into_iter().flatten() {
        println!(
            "market {} tick {} lot {}",
            m["name"], m["tick_size"], m["lot_size"]
        );
    }

    // A small ladder of resting orders, then one crossing order.
    let mut placed = Vec::new();
    for (side, offset) in [("buy", -2), ("buy", -1), ("sell", 1), ("sell", 2)] {
        let body = json!({
            "market": market, "side": side, "type": "limit",
            "price": format!("{}.00", mid + offset), "quantity": "1", "time_in_force": "gtc",
        });
        placed.push(place(&http, &api, body).await?);
    }
    let taker = json!({"market": market, "side": "buy", "type": "limit",
        "price": format!("{}.00", mid + 1), "quantity": "0.5", "time_in_force": "ioc"});
    placed.push(place(&http, &api, taker).await?);

    // Wait until every order has left `pending` (settled), with a deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in &placed {
        loop {
            let order: Value = http
                .get(format!("{api}/v1/orders/{id}"))
                .send()
                .await?
                .json()
                .await?;
            if order["status"] != "pending" {
                println!(
                    "order {id}: {} filled {} remaining {}",
                    order["status"], order["filled_quantity"], order["remaining_quantity"]
                );
                break;
            }
            if Instant::now() > deadline {
                println!(
                    "order {id} still pending: is a member silent? see /v1/status waiting_for"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let book: Value = http
        .get(format!("{api}/v1/markets/{market}/book?depth=5"))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "{:>14} {:>14} | {:<14} {:<14}",
        "bid qty", "bid", "ask", "ask qty"
    );
    let empty = Vec::new();
    let bids = book["bids"].as_array().unwrap_or(&empty);
    let asks = book["asks"].as_array().unwrap_or(&empty);
    for i in 0..bids.len().max(asks.len()) {
        let cell = |side: &[Value], j: usize| {
            side.get(i)
                .and_then(|level| level[j].as_str())
                .unwrap_or("")
                .to_owned()
        };
        println!(
            "{:>14} {:>14} | {:<14} {:<14}",
            cell(bids, 1),
            cell(bids, 0),
            cell(asks, 0),
            cell(asks, 1)
        );
    }
    let trades: Value = http
        .get(format!("{api}/v1/markets/{market}/trades?limit=5"))
        .send()
        .await?
        .json()
        .await?;
    for t in trades.as_array().into_iter().flatten() {
        println!(
            "trade #{} {} {} @ {} (maker {}, taker {})",
            t["trade_id"],
            t["taker_side"],
            t["quantity"],
            t["price"],
            t["maker_order_id"],
            t["taker_order_id"]
        );
    }

    // Cancel what is still open.
    for id in &placed {
        let res = http.delete(format!("{api}/v1/orders/{id}")).send().await?;
        let code = res.status();
        let body: Value = res.json().await?;
        if code.is_success() {
            println!("cancel {id}: accepted");
        } else {
            println!("cancel {id}: {}", body["error"]["message"]);
        }
    }
    Ok(())
}

async fn place(http: &reqwest::Client, api: &str, body: Value) -> Result<String> {
    let res = http
        .post(format!("{api}/v1/orders"))
        .json(&body)
        .send()
        .await?;
    let code = res.status();
    let reply: Value = res.json().await?;
    if !code.is_success() {
        return Err(format!("order refused ({code}): {}", reply["error"]["message"]).into());
    }
    let id = reply["order_id"]
        .as_str()
        .ok_or("no order_id in the reply")?
        .to_owned();
    println!(
        "placed {} {} @ {} -> {id}",
        body["side"], body["quantity"], body["price"]
    );
    Ok(id)
}
