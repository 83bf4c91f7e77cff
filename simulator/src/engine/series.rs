//! The run's figures: one `SecondSample` per virtual second, and the summaries
//! the engine hands over at the end. Never a state change of the wallet.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use reports::{
    CapacitySummary, DelaySummary, GateFigures, SecondSample, StockSample, StoresSummary, TraceInfo,
};

use super::Engine;
use crate::record::Finished;

impl Engine<'_> {
    /// End the current virtual second: one row of the series. Returns the
    /// virtual seconds since the start at its end.
    pub(super) async fn close_second(&mut self) -> anyhow::Result<u64> {
        let t_s = (self.next_second_ms - self.scenario.start_ms) / 1000 - 1;
        let gate_window = (self.next_second_ms - 1000) / 1000;
        self.next_second_ms += 1000;
        let window = std::mem::take(&mut self.window);
        let credits = self.meters.ledger.take_credit_window();
        for delay in &credits.delays {
            self.delays.saturating_record(*delay);
        }
        for delay in &credits.coupon_delays {
            self.coupon_delays.saturating_record(*delay);
        }
        let kv = self.meters.kv.take_window();
        let db = self.meters.ledger.take_window();
        let (mut consumed, mut stock) = (0, 0);
        let mut per_template = BTreeMap::new();
        for template in &self.templates {
            if let Ok(Ok(view)) = self
                .wallet
                .coupon_stock(self.scenario.activity_id, *template)
                .await
            {
                consumed += view.consumed;
                stock += view.total;
                per_template.insert(
                    template.to_string(),
                    StockSample {
                        consumed: view.consumed,
                        total: view.total,
                    },
                );
                if !view.should_offer {
                    self.withdrawn_offers.insert(*template);
                }
            }
        }
        let quantile = |q: f64| {
            let mut sorted = credits.delays.clone();
            sorted.sort_unstable();
            if sorted.is_empty() {
                0
            } else {
                sorted[((sorted.len() - 1) as f64 * q).round() as usize]
            }
        };
        let (db_writes, db_limit) = self.capacity.db.window_figures(gate_window);
        let (_, kv_limit) = self.capacity.kv.window_figures(gate_window);
        self.peak_awarded = self.peak_awarded.max(window.offered_awards);
        self.series.push(SecondSample {
            t_s,
            offered: window.offered,
            awarded: window.awarded,
            rejected: window.rejected,
            credited: credits.credited,
            backlog: self.backlog,
            pipeline_depth: self.pipeline.as_ref().map_or(0, |p| {
                let (a, b) = p.depths();
                a + b
            }),
            delay_p50_ms: quantile(0.5),
            delay_p99_ms: quantile(0.99),
            delay_p999_ms: quantile(0.999),
            delay_max_ms: credits.delays.iter().copied().max().unwrap_or(0),
            coupons_consumed: consumed,
            coupon_stock: stock,
            stock: per_template,
            counter_shown: window.counter_shown,
            counter_true: self.counter.as_ref().map_or(0, |c| c.true_total),
            kv_ops: kv.calls,
            db_ops: db.calls,
            db_writes,
            db_limit: db_limit.unwrap_or(0),
            kv_limit: kv_limit.unwrap_or(0),
            latency_p99_us: 0,
        });
        self.bar.set_position(t_s + 1);
        Ok(t_s + 1)
    }

    pub(super) fn finish(self) -> Finished {
        let scale = self.scenario.sample_rate;
        let summary = |delays: &Histogram<u64>| {
            (!delays.is_empty()).then(|| DelaySummary {
                count: delays.len(),
                p50_ms: delays.value_at_quantile(0.5),
                p90_ms: delays.value_at_quantile(0.9),
                p99_ms: delays.value_at_quantile(0.99),
                p999_ms: delays.value_at_quantile(0.999),
                max_ms: delays.max(),
            })
        };
        let delay = summary(&self.delays);
        let coupon_delay = summary(&self.coupon_delays);
        let capacity = self.scenario.capacity.is_modelled().then(|| {
            let peak_award_qps = self.peak_awarded as f64 / scale;
            let model = self.scenario.capacity.db_model();
            CapacitySummary {
                gates: {
                    let f = self.capacity.figures();
                    [
                        ("app", f.app),
                        ("db", f.db),
                        ("kv", f.kv),
                        ("kv_key", f.kv_key),
                    ]
                    .into_iter()
                    .map(|(name, t)| {
                        (
                            name.to_owned(),
                            GateFigures {
                                admitted: t.admitted,
                                refused: t.refused,
                            },
                        )
                    })
                    .collect()
                },
                sync_db_instances_needed: model.and_then(|m| m.instances_for(peak_award_qps)),
                peak_award_qps,
                db_tps: model.map_or(0.0, |m| m.throughput(self.scenario.capacity.db_instances)),
            }
        });
        let kv = self.meters.kv.figures();
        let db = self.meters.ledger.figures();
        let stores = StoresSummary {
            kv_calls: kv.calls,
            db_calls: db.calls,
            kv_peak_per_s: self.series.iter().map(|s| s.kv_ops).max().unwrap_or(0),
            db_peak_per_s: self.series.iter().map(|s| s.db_ops).max().unwrap_or(0),
        };
        Finished {
            history: self.history,
            crediting: self.summary,
            series: self.series,
            views: self.views,
            delay,
            coupon_delay,
            capacity,
            stores,
            trace: TraceInfo {
                hash: self.trace.finish(),
                ops: self.trace.ops(),
                shard: None,
                source: String::new(),
            },
            refused: self.refused,
            spent: self
                .spent
                .into_iter()
                .map(|(part, d)| (part.to_owned(), d.as_millis() as u64))
                .collect(),
            midway_checks: Vec::new(),
        }
    }
}
