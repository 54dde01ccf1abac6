//! A PUBLISH and the posts it carries ([`Command`]), and what happens when Redis answers a
//! write of them: the publisher's one pipelined write on one Redis, and each master's lane on
//! a cluster ([`super::lanes`]), settle through here.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::connection::{Failure, Outbound};
use super::state::State;
use crate::error::Reason;
use crate::export;

/// One PUBLISH and the tickets it carries.
pub(super) struct Command {
    pub(super) outbound: Outbound,
    pub(super) tickets: Arc<[u64]>,
    /// What its posts take of their outage budgets: (budget, posts, bytes), one entry per
    /// run of posts with the same budget (one, but across a move of the channel's slot).
    pub(super) charges: Vec<(u8, u64, u64)>,
}

/// How long a write that failed with its connection waits before it is sent again.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Marks `commands` as written, not yet answered: if the bus shuts down before Redis
/// answers, their Deliveries say that they may or may not have reached it
/// (`State::outcome`).
pub(super) fn sending(state: &State, commands: &[Command]) {
    let mut sending = state.sending.lock();
    for command in commands {
        if let Some(&first) = command.tickets.first() {
            sending.insert(first, command.tickets.clone());
        }
    }
}

/// Settles what Redis answered for in one write of `commands` (acknowledged, or refused
/// with its reason), and returns the rest: those to send again as they are (the connection
/// failed under them), and those a cluster master answered with `MOVED`, with the master it
/// named.
pub(super) fn account(
    state: &State,
    commands: Vec<Command>,
    results: Vec<Result<(), Failure>>,
) -> (Vec<Command>, Vec<(String, Command)>) {
    state.batches.fetch_add(1, Relaxed);
    export::batch(
        &state.namespace,
        commands.iter().map(|c| c.tickets.len()).sum(),
    );
    let mut settled = Vec::new();
    // The `sending` keys of the commands answered.
    let mut answered = Vec::new();
    let mut charges = Vec::new();
    let mut refused = Vec::new();
    let mut retry = Vec::new();
    let mut moved = Vec::new();
    for (command, result) in commands.into_iter().zip(results) {
        match result {
            Err(Failure::Retry) => retry.push(command),
            Err(Failure::Moved(to)) => moved.push((to, command)),
            Ok(()) => {
                answered.extend(command.tickets.first().copied());
                charges.extend(command.charges);
                settled.extend_from_slice(&command.tickets);
            }
            Err(Failure::Refused(reason)) => {
                tracing::warn!(
                    target: "evbus",
                    channel = %command.outbound.channel(),
                    messages = command.tickets.len(),
                    reason = %reason,
                    "Redis refused a PUBLISH; its posts' Deliveries fail with the reason"
                );
                refused.extend(command.tickets.iter().map(|&t| (t, reason.clone())));
                answered.extend(command.tickets.first().copied());
                charges.extend(command.charges);
                settled.extend_from_slice(&command.tickets);
            }
        }
    }
    settle(state, settled, &answered, charges, refused);
    (retry, moved)
}

/// Settles tickets Redis answered for: acknowledged, or `refused` with its reason; takes
/// their commands (by their `answered` keys) out of `sending`; gives back what their posts
/// took of their outage budgets (`charges`).
fn settle(
    state: &State,
    settled: Vec<u64>,
    answered: &[u64],
    charges: Vec<(u8, u64, u64)>,
    refused: Vec<(u64, Reason)>,
) {
    if settled.is_empty() {
        return;
    }
    if !refused.is_empty() {
        state.refuse(refused);
    }
    {
        let mut sending = state.sending.lock();
        for key in answered {
            sending.remove(key);
        }
    }
    state.release(charges);
    let moved = state.settler.lock().settle(settled);
    state.progress.send_modify(|p| {
        p.settlements += 1;
        if let Some(acked) = moved {
            p.acked = acked;
        }
    });
}
