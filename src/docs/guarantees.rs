//! The behaviour contract: what evbus promises, one section per rule id.
//!
//! The code and its comments cite these rules by id (`L02`, `S03`, `G06`, ...); this is where
//! an id is looked up. `L` rules are about local delivery in one process, `S` about sessions,
//! `G` about global messages through Redis, `R` about authentication revocation, `C` about a
//! Redis Cluster, `K` about repairing lost global messages. Where a rule differs from
//! Serverpod's server events on purpose, it says so.
//!
//! Every id has at least one test named after it, lowercased (`l02_...` for L02), listed at
//! the end of its section with the file it is in: `tests/rules.rs` has one test per rule;
//! `tests/model.rs` compares the bus with a reference model over random operation sequences;
//! `tests/stress.rs` runs rules under many threads (its `_large` variants are `#[ignore]`d:
//! `cargo test --release -- --ignored`); `tests/global.rs` checks the Redis rules against
//! `redis-server` processes the tests start themselves. `tests/faults.rs` puts G04 and G06 to
//! G08 through Redis faults (a killed server, cut connections, replayed frames); its tests are
//! named after the fault and open by citing the rules they check.
//!
//! # Local delivery
//!
//! ## L01
//!
//! A post to a channel that has no listener and no stream succeeds and reaches nobody: its
//! [`Delivery::local_receivers`] is 0.
//!
//! Test: `tests/rules.rs`, `l01_post_without_listeners_reaches_nobody`.
//!
//! ## L02
//!
//! A local post calls each listener of the channel exactly once, on the posting thread, and
//! all of them before [`Messages::post_message`] returns. They are called in the order they
//! were added with [`Messages::add_listener`].
//!
//! Tests: `tests/rules.rs`, `l02_listeners_called_once_on_posting_thread_in_add_order`;
//! `tests/model.rs`, `l02_model_listeners_called_in_add_order_exactly_once` and
//! `l02_model_order_kept_across_trie_growth_and_repack`.
//!
//! ## L03
//!
//! By the time a local post returns, every [`MessageStream`] of the channel has the message
//! in its buffer: the post wrote it into the ring the channel's streams of its type read, once
//! for all of them. The messages one thread posts come out of a stream in the order it posted
//! them.
//!
//! Test: `tests/rules.rs`, `l03_streams_have_the_message_before_post_returns_in_post_order`.
//!
//! ## L04
//!
//! The local path never serializes. Every listener is handed a `&M` to the one posted value,
//! and every stream yields an `Arc<M>` clone of one shared allocation.
//!
//! Test: `tests/rules.rs`, `l04_every_receiver_gets_the_same_value_unserialized`.
//!
//! ## L05
//!
//! Receivers are typed: a listener or stream of `M` gets only messages of type `M`. A message
//! of another type on the same channel passes it by, is counted in
//! [`Stats::type_mismatches`], and is not counted in [`Delivery::local_receivers`]; nothing
//! panics.
//!
//! Test: `tests/rules.rs`, `l05_receivers_of_another_type_are_skipped_and_counted`.
//!
//! ## L06
//!
//! A post works on the channel as it stood when the post began. From inside a listener one may
//! add or remove listeners (the running one included), post again, or close sessions: nothing
//! deadlocks and no listener of that post is skipped; changes take effect for later posts.
//! Serverpod's issue 2754 was a bug of exactly this kind.
//!
//! Test: `tests/rules.rs`, `l06_listeners_may_change_the_channel_and_post_during_a_post`.
//!
//! ## L07
//!
//! A listener that panics is caught. The remaining listeners still run, the post still returns
//! `Ok`, the panic is counted in [`Stats::listener_panics`], and the bus goes on working.
//!
//! Test: `tests/rules.rs`, `l07_a_panicking_listener_does_not_stop_others`.
//!
//! ## L08
//!
//! Each [`Messages::add_listener`] call returns a fresh [`ListenerId`], even when the same
//! closure is added twice: Rust closures have no identity to compare, unlike Dart functions,
//! so this differs from Serverpod on purpose. [`Messages::remove_listener`] returns false for
//! an id that is unknown on that channel, or a channel that is unknown.
//!
//! Test: `tests/rules.rs`, `l08_every_add_returns_a_new_id_and_unknown_ids_are_refused`.
//!
//! ## L09
//!
//! Once [`Messages::remove_listener`] has returned, no post that starts afterwards calls the
//! listener. A post already under way on another thread may still call it one last time; the
//! closure is kept alive for that post and dropped as soon as it is done (see S03).
//!
//! Tests: `tests/rules.rs`,
//! `l09_removed_listener_is_not_called_by_later_posts_but_may_finish_a_running_one`;
//! `tests/stress.rs`, `l09_removed_listener_closure_released_after_inflight_posts` (and
//! `_large`).
//!
//! ## L10
//!
//! Posting takes no lock, whatever registrations, removals or session closes run beside it:
//! to listeners it is lock-free, and wait-free unless a registration on the same channel lands
//! between the two loads of the post's borrow of its receivers (the post then reads them
//! again); the write to the streams' ring is lock-free: it never waits for another post,
//! not even one preempted in the middle of a write to the same slot (it drops its own message
//! instead, and counts it). The exact progress guarantee of each step, and the one
//! once-per-thread exception, are in [`performance`](super::performance).
//!
//! Tests: `tests/rules.rs`, `l10_posts_never_wait_for_running_posts_or_registrations`;
//! `tests/stress.rs`, `l10_post_while_registering_and_removing` (and `_large`).
//!
//! ## L11
//!
//! A stream buffers at most [`BusBuilder::stream_capacity`] messages. When a post finds it
//! full, the oldest buffered message is dropped and counted in [`MessageStream::missed`] and
//! [`Stats::stream_dropped`]; the poster is not slowed down. Each message posted to a stream
//! is either yielded or counted as missed: yielded + missed == sent. A stream reads exactly
//! the positions of its ring from where it joined to where it left, and a post learns how
//! many streams its position is for in the same `fetch_add` that claims it, so the count is
//! exact also while streams come and go during posts. A message is counted in
//! `Stats::stream_dropped` when it is dropped (overwritten, or pushed out of a buffer of
//! fewer than a power of two); `missed()` counts, besides those the stream skipped, those
//! that newer messages already pushed out of its buffer.
//!
//! Tests: `tests/rules.rs`, `l11_a_full_stream_drops_its_oldest_and_counts_it`;
//! `tests/stress.rs`, `l11_stream_accounting_under_concurrent_posts` (and `_large`);
//! `tests/model.rs`, `l11_model_streams_drop_oldest_and_count_missed` and
//! `l11_model_stream_keeps_newest_and_ends_after_close`.
//!
//! ## L12
//!
//! Dropping a [`MessageStream`] removes it from its channel, and the bus keeps nothing of it.
//!
//! Test: `tests/rules.rs`, `l12_dropping_a_stream_unregisters_it_and_frees_its_buffer`.
//!
//! ## L13
//!
//! Channel names are interned only while something holds the channel: a listener, a stream or
//! a live [`Channel`] handle. When the last of them goes, the channel is forgotten at once, and
//! posting to a name interns nothing. So any number of short-lived channels (one per user)
//! leave no memory behind, and [`Stats::channels`] is back to where it was. (A thread that
//! posted to one name twice in a row keeps that channel's empty shell, about a hundred bytes,
//! until it looks up another name twice or exits: the by-name post's cache, never a
//! receiver.)
//!
//! Tests: `tests/rules.rs`, `l13_a_million_short_lived_channels_leave_nothing_behind`,
//! `l13_a_name_posted_to_again_after_it_was_forgotten_reaches_its_new_listeners`,
//! `l13_a_dropped_bus_frees_its_listeners_though_a_thread_posted_to_them_by_name`;
//! `tests/model.rs`, `l13_model_channels_forgotten_with_last_registration`.
//!
//! # Sessions
//!
//! ## S01
//!
//! Listeners and streams registered through a session's [`Session::messages`] belong to it.
//! [`Session::close`], or dropping the session, removes every one of them; closing twice is
//! the same as closing once.
//!
//! Test: `tests/rules.rs`, `s01_closing_a_session_removes_what_it_registered_idempotently`.
//!
//! ## S02
//!
//! When its session closes, a stream first yields what it had buffered and then ends
//! (`None`). A consumer waiting on the stream is woken by the close.
//!
//! Tests: `tests/rules.rs`, `s02_a_closed_sessions_streams_yield_their_buffer_then_end` and
//! `s02_a_waiting_stream_is_woken_by_the_close`.
//!
//! ## S03
//!
//! Once a session is closed and dropped, the bus holds no strong reference to anything
//! registered through it. A closure that captured an `Arc` lets go of it as soon as the posts
//! that began before the close have finished, without waiting for a later post or a timer.
//! Serverpod's issue 5502 was a leak of this kind. L09 and L12 release in the same way.
//!
//! Test: `tests/rules.rs`, `s03_a_closed_session_releases_captures_once_running_posts_finish`.
//!
//! ## S04
//!
//! Registering through a session that is already closed does nothing lasting: the listener is
//! never called and its closure is dropped at once, the stream ends at once. Posting through a
//! closed session still works.
//!
//! Tests: `tests/rules.rs`, `s04_registrations_through_a_closed_session_are_inert`;
//! `tests/model.rs`, `s04_model_closed_session_registrations_are_inert`.
//!
//! ## S05
//!
//! What is registered through [`Bus::messages`] belongs to no session: it stays until it is
//! removed (or its stream dropped) or until [`Bus::shutdown`].
//!
//! Test: `tests/rules.rs`, `s05_bus_level_registrations_live_until_removed_or_shutdown`.
//!
//! ## S06
//!
//! Sessions may be closed while other threads post to their channels: that is safe, and
//! afterwards nothing is leaked (no captured value, listener, stream or channel left).
//!
//! Tests: `tests/rules.rs`, `s06_closing_sessions_while_another_thread_posts_is_safe`;
//! `tests/stress.rs`, `s06_close_sessions_while_posting` (and `_large`).
//!
//! # Global delivery through Redis
//!
//! ## G01
//!
//! A [`MessageScope::Global`] post on a bus built without a Redis URL fails at once with
//! [`PostError::RedisNotEnabled`], whose text is "Redis needs to be enabled to post global
//! messages". Nothing is delivered and nothing is counted as posted.
//!
//! Test: `tests/rules.rs`, `g01_global_post_without_redis_fails_at_once`.
//!
//! ## G02
//!
//! [`MessageScope::Auto`], the default scope, means Global on a bus with Redis
//! ([`Bus::has_redis`]) and Local on a bus without.
//!
//! Test: `tests/rules.rs`, `g02_auto_is_local_on_a_bus_without_redis`; the bus with Redis is
//! checked in `tests/global.rs`, `g03_global_post_reaches_every_subscribed_bus_only_through_redis`.
//!
//! ## G03
//!
//! A global post goes only through Redis, as in Serverpod: nothing is called before
//! [`Messages::post_message`] returns, and every bus subscribed to the channel, the posting
//! bus included, hands the message to its own listeners and streams when Redis delivers it. A
//! bus decodes each message once per receiver type, not once per receiver.
//!
//! Test: `tests/global.rs`, `g03_global_post_reaches_every_subscribed_bus_only_through_redis`.
//!
//! ## G04
//!
//! A bus subscribes a channel on Redis when the channel gets its first local listener or
//! stream, and unsubscribes when its last one goes. [`Bus::subscriptions_ready`] returns once
//! Redis has confirmed every subscription change made before the call; a global post made
//! after that, from any bus, is received. Serverpod's issue 5248 was a race here.
//!
//! Test: `tests/global.rs`,
//! `g04_subscribe_on_first_receiver_unsubscribe_on_last_and_ready_means_received`; under a
//! long outage, `tests/faults.rs`, `subscription_changes_and_posts_during_a_long_outage`.
//!
//! ## G05
//!
//! Global posts are batched: whatever is queued when the publisher gets to it (up to a cap)
//! goes out in one pipelined write, so more load means larger batches, while a lone post
//! leaves at once (there is no timer to wait for). In [`WireFormat::Native`] the batched
//! messages of one channel are packed into as few PUBLISH frames as
//! [`BusBuilder::max_message_bytes`] allows; no frame is larger.
//!
//! Test: `tests/global.rs`, `g05_posts_are_batched_under_load_and_a_lone_post_leaves_at_once`.
//!
//! ## G06
//!
//! In [`WireFormat::Native`] every message carries the id of the bus that posted it and a
//! sequence number counted per origin and channel. A receiver drops a message it has already
//! had and counts it in [`Stats::global_duplicates`]; it reports a gap, once the next message
//! from that origin shows it, as [`BusEvent::MessagesMissed`] and in [`Stats::global_missed`].
//! A lost message is never silent. ([`WireFormat::Serverpod`] has no sequence numbers: there
//! only messages the bus itself read too slowly are counted as missed.)
//!
//! Tests: `tests/global.rs`,
//! `g06_native_frames_carry_origin_and_sequence_duplicates_dropped_gaps_reported`; under
//! faults, `tests/faults.rs`, `duplicates_after_replay_are_dropped`,
//! `kill_and_restart_redis_mid_stream`, `client_kill_type_pubsub`,
//! `subscriber_cut_off_by_output_buffer_limit` and `flapping_redis`.
//!
//! ## G07
//!
//! While Redis cannot be reached, global posts are held, up to
//! [`BusBuilder::outage_buffer`] of them ([`Stats::global_buffered`]) and
//! `outage_buffer_bytes` of their bytes, and sent once the bus has reconnected, in the order
//! they were posted (per channel and posting thread, as always). A post beyond either bound
//! fails with [`PostError::Backpressure`]. A [`Delivery`] whose message can never be sent (the
//! bus shut down first) resolves to an error that says whether it was never written to Redis
//! or written without an answer: nothing is dropped without a trace.
//!
//! Tests: `tests/global.rs`, `g07_posts_are_held_during_an_outage_sent_in_order_after_and_bounded`;
//! under faults, `tests/faults.rs`, `kill_and_restart_redis_mid_stream`,
//! `held_posts_survive_an_outage_in_order` and
//! `subscription_changes_and_posts_during_a_long_outage`.
//!
//! ## G08
//!
//! The bus reconnects by itself. Afterwards every channel that has local receivers at that
//! moment is subscribed again, including channels that got their first receiver during the
//! outage, with no call from the user; then [`BusEvent::Reconnected`] is emitted (after
//! [`BusEvent::Disconnected`] and [`BusEvent::Connected`]).
//!
//! Tests: `tests/global.rs`,
//! `g08_after_a_reconnect_every_channel_is_resubscribed_and_reconnected_emitted`; under faults,
//! every test in `tests/faults.rs` but `duplicates_after_replay_are_dropped`.
//!
//! ## G09
//!
//! Everything that comes from Redis is untrusted. A payload that does not decode, a message
//! that names a class no receiver of the bus takes, or one larger than
//! [`BusBuilder::max_message_bytes`] (judged message by message, also inside a frame that
//! carries others) is counted in [`Stats::global_decode_errors`], reported as
//! [`BusEvent::DecodeFailed`], and skipped; the rest of the frame is delivered. A frame whose
//! body cannot be read but whose header can counts its messages missed. A message one
//! receiver type cannot decode still reaches the other types. The subscription keeps working,
//! and nothing panics.
//!
//! Test: `tests/global.rs`,
//! `g09_undecodable_unknown_and_oversized_payloads_are_counted_reported_and_skipped`.
//!
//! ## G10
//!
//! [`BusBuilder::namespace`] puts a prefix before every Redis channel name the bus uses, so
//! applications that share one Redis under different prefixes never see each other's
//! messages. Channel names in the API and in [`BusEvent`]s stay without the prefix.
//!
//! Test: `tests/global.rs`, `g10_namespaces_keep_applications_apart`.
//!
//! ## G11
//!
//! With [`WireFormat::Serverpod`] the bus writes exactly the JSON payloads Serverpod writes,
//! one message per PUBLISH, and reads them (also Serverpod 2.x's, without `__className__`), so
//! Rust and Serverpod servers can share one Redis. A message's class name is its type's name
//! without the module path, unless set with [`BusBuilder::class_name`].
//!
//! Test: `tests/global.rs`, `g11_serverpod_format_reads_and_writes_serverpods_exact_payloads`.
//!
//! ## G12
//!
//! [`Bus::flush`] returns once Redis has acknowledged every global post made before the call.
//! [`Bus::shutdown`] flushes, unsubscribes, closes the Redis connections, removes every
//! listener, and ends every stream (after what it buffered) and every [`BusEvents`]; it
//! returns within a bounded time even when Redis cannot be reached, then with an error saying
//! how many posts were never acknowledged. From then on every post fails with
//! [`PostError::ShutDown`]. A bus whose last handle is dropped without `shutdown` is closed
//! the same way in the background, so what it posted still goes out.
//!
//! Tests: `tests/global.rs`, `g12_flush_and_shutdown_are_bounded_and_final` and
//! `g12_a_bus_dropped_without_shutdown_closes_in_the_background`.
//!
//! # Authentication revocation
//!
//! ## R01
//!
//! [`Messages::revoke_authentication`]`(id, r)` posts `r` on
//! [`revoked_authentication_channel`]`(id)`, which is Serverpod's
//! `_serverpod_revoked_authentication_{id}`, with [`MessageScope::Auto`]: through Redis on a
//! bus that has it, locally on one that does not.
//!
//! Tests: `tests/rules.rs`, `r01_revoke_posts_on_the_users_channel_with_auto_scope`;
//! `tests/global.rs`, `r01_revocation_goes_through_redis_on_a_bus_with_redis`.
//!
//! ## R02
//!
//! The three kinds of [`RevokedAuthentication`] travel under Serverpod's class names and
//! fields (`serverpod.RevokedAuthenticationUser`, `serverpod.RevokedAuthenticationAuthId` with
//! `authId`, `serverpod.RevokedAuthenticationScope` with `scopes`), in both wire formats. Every
//! bus receives them as [`RevokedAuthentication`], through
//! `create_stream::<RevokedAuthentication>` and `add_listener` alike.
//!
//! Tests: `tests/rules.rs`, `r02_revocations_arrive_typed_to_streams_and_listeners`;
//! `tests/global.rs`, `r02_revocations_use_serverpods_classes_in_both_wire_formats`.
//!
//! ## R03
//!
//! [`RevokedAuthentication::affects`] is Serverpod's rule for which connections a revocation
//! closes: `User` affects every authenticated connection, `AuthId(a)` only the one
//! authenticated as `a`, `Scope(s)` one whose endpoint requires any scope in `s`; a connection
//! that is not authenticated is never affected.
//!
//! Tests: `tests/rules.rs`, `r03_affects_follows_serverpods_rule`; `tests/global.rs`,
//! `r03_a_revocation_through_redis_closes_exactly_the_affected_connections`.
//!
//! # Redis Cluster (sharded pub/sub)
//!
//! A `redis-cluster://host:port?node=host2:port2` URL (`rediss-cluster://` with the `tls`
//! feature) builds a bus on a Redis 7 Cluster whose global messages use sharded pub/sub: a
//! channel's messages go only to the shard that owns its slot, so the cluster's pub/sub
//! capacity grows with its masters. A `redis-sentinel://` URL follows the master that Sentinel
//! names, with the G rules as on one Redis.
//!
//! ## C01
//!
//! Every rule of G and R holds across a cluster: messages of a channel reach every bus
//! subscribed to it, in per-channel post order, whichever master owns the channel's slot;
//! duplicates are dropped and gaps reported; posts are held through an outage and the
//! subscriptions restored after it; namespaces and the Serverpod format work as on one Redis.
//!
//! Tests: `tests/cluster.rs`, `c01_every_global_rule_holds_across_a_cluster`,
//! `c01_a_cluster_outage_holds_posts_and_restores_subscriptions`,
//! `c01_namespaces_and_the_serverpod_format_hold_on_a_cluster`.
//!
//! ## C02
//!
//! A channel is subscribed with `SSUBSCRIBE` on the master that owns its slot, and only there;
//! posts use `SPUBLISH`. No classic `SUBSCRIBE` or `PUBLISH` is sent to a cluster (Redis
//! broadcasts those to every node). The last local receiver going sends `SUNSUBSCRIBE`.
//!
//! Tests: `tests/cluster.rs`,
//! `c02_channels_are_ssubscribed_on_their_owner_only_and_posts_use_spublish` (checked with
//! `PUBSUB SHARDNUMSUB`, `PUBSUB NUMSUB` and `INFO commandstats` on every node).
//!
//! ## C03
//!
//! When a channel's slot moves to another master while the bus runs (a resharding, or slots
//! rebalanced onto a node added to the cluster), the bus subscribes it on the new owner by
//! itself, within about a quarter of a second (it re-reads the slot table that often), emits
//! [`BusEvent::Resubscribed`], and posts follow the slot (`MOVED`). What was posted between the
//! move and the new subscription is reported missed (G06); delivery goes on with no call from
//! the user.
//!
//! Tests: `tests/cluster.rs`, `c03_a_moved_slot_is_followed_and_nothing_is_lost_silently`,
//! `c03_a_slot_rebalanced_onto_an_added_node_is_followed`.
//!
//! ## C04
//!
//! When a master fails and its replica is promoted, subscriptions and pending posts move to the
//! new master: every message posted meanwhile is delivered once or reported missed. The same
//! holds for a failover that Sentinel performs, on a `redis-sentinel://` URL. Each master has
//! a publishing connection and an outage budget of its own, so while one master is down the
//! others' channels keep flowing; a master that dies with no replica holds its own channels'
//! posts up to `outage_buffer` (then `Backpressure`), and shutdown names those it still held.
//!
//! Tests: `tests/cluster.rs`,
//! `c04_a_master_failover_moves_subscriptions_and_posts_to_the_promoted_replica`,
//! `c04_a_lost_shard_without_replica_backpressures_its_own_channels_only`,
//! `sentinel_a_failover_is_followed_and_losses_reported`.
//!
//! # Repair
//!
//! Redis pub/sub delivers at most once: a subscriber that is disconnected, or cut off for
//! its output buffer, loses what was published meanwhile. With [`WireFormat::Native`] evbus
//! repairs such losses from the origin, the way reliable multicast does it (negative
//! acknowledgements): the posting bus still has what it sent. Nothing is stored in Redis, and
//! nothing is sent while nothing is lost but one announcement per quiet channel.
//!
//! **What is promised**: every message is delivered exactly once and in order per origin and
//! channel, *while the origin lives and its window still holds the message*. **What is not**:
//! an origin that crashed or shut down cannot repair; a loss larger than its window is
//! repaired only in its newest part (the rest is counted missed, G06); the
//! [`WireFormat::Serverpod`] format has no sequence numbers, so no repair; a message this
//! bus dropped itself (its receive buffer full, or its Redis client's buffer) is counted
//! missed at once and not asked for.
//!
//! ## K01
//!
//! Each bus keeps the frames it published, as published, in one retransmit window bounded in
//! messages and bytes ([`BusBuilder::repair_window`], default 100,000 messages and 64 MiB),
//! oldest evicted first. Its memory never exceeds the byte bound plus a small entry per
//! frame ([`Stats::global_repair_window_bytes`] shows it); `(0, 0)` turns repair off.
//!
//! Tests: `tests/repair.rs`, `k01_the_retransmit_window_stays_within_its_bounds`; unit tests
//! in `src/redis/window.rs`.
//!
//! ## K02
//!
//! A receiver that finds a gap from an origin asks that origin for the missing range on the
//! origin's control channel (`<namespace>__evbus:repair:<origin id>`); the origin sends
//! what it still has to the asker alone, and says what it no longer has. What comes back is
//! delivered ([`Stats::global_repaired`]); what is gone is counted in
//! [`Stats::global_missed`] and reported, as in G06. Duplicates are dropped: a message is
//! never delivered twice. A gap is asked for up to four times: again after `repair_timeout`
//! without progress, then after twice, four and eight times that (15 `repair_timeout`s, 3 s
//! by default: time for the origin to subscribe its control channel again after an
//! outage). [`Stats::global_repair_requests`] counts the requests.
//!
//! Tests: `tests/repair.rs`, `k02_what_a_receiver_lost_is_repaired_from_its_origin`; the
//! fault tests of `tests/faults.rs` (Redis killed and restarted, `CLIENT KILL TYPE pubsub`)
//! check that nothing is missed with the default window, and with a window of 10 messages
//! that received + missed == posted.
//!
//! ## K03
//!
//! While a gap is being repaired, later messages of that origin on that channel wait; then
//! everything is delivered in sequence order. The wait is bounded in time (15
//! [`BusBuilder::repair_timeout`]s without progress over the four asks of K02, 3 s by
//! default; it starts again whenever part of the gap arrives) and in memory (at most 65,536 messages and a quarter of `receive_buffer_bytes`
//! per dispatch thread; past either the gap is given up at once). Other channels and other
//! origins never wait.
//!
//! Tests: `tests/repair.rs`, `k03_later_messages_wait_for_the_gap_and_nothing_else_does`.
//!
//! ## K04
//!
//! A lost last message is found without waiting for the next post: an origin that has been
//! quiet on a channel for 100 ms announces its last sequence number there, once, and a
//! receiver that has just resubscribed after a disconnect asks each origin it knows on each
//! channel for its latest sequence number (an announcement sent while it was away is lost
//! like any message). Either shows the gap, which is then asked for as in K02.
//!
//! Tests: `tests/repair.rs`, `k04_a_lost_last_message_is_asked_for_without_another_post`
//! (announcements) and `k02_what_a_receiver_lost_is_repaired_from_its_origin` (after a
//! reconnect, with nothing posted after it).
//!
//! ## K05
//!
//! Repair requests and answers are untrusted bytes like every frame: their decoder is total
//! (fuzzed: `fuzz/fuzz_targets/control_message.rs`), and with a signing key they carry a MAC
//! and are refused without one. Malformed ones are counted
//! ([`Stats::global_repair_refused`]) and change nothing; one request never makes an origin
//! resend more than its window; each asker may make 4,096 requests at once and 1,024 a
//! second after that, and be resent a window's worth of bytes a second; past either its
//! requests are refused and counted.
//!
//! Tests: `tests/repair.rs`, `k05_hostile_repair_messages_are_counted_and_bounded`.
//!
//! [`BusEvent::Resubscribed`]: crate::BusEvent::Resubscribed
//! [`Bus::flush`]: crate::Bus::flush
//! [`Bus::has_redis`]: crate::Bus::has_redis
//! [`Bus::messages`]: crate::Bus::messages
//! [`Bus::shutdown`]: crate::Bus::shutdown
//! [`Bus::subscriptions_ready`]: crate::Bus::subscriptions_ready
//! [`BusBuilder::class_name`]: crate::BusBuilder::class_name
//! [`BusBuilder::max_message_bytes`]: crate::BusBuilder::max_message_bytes
//! [`BusBuilder::namespace`]: crate::BusBuilder::namespace
//! [`BusBuilder::outage_buffer`]: crate::BusBuilder::outage_buffer
//! [`BusBuilder::stream_capacity`]: crate::BusBuilder::stream_capacity
//! [`BusBuilder::repair_window`]: crate::BusBuilder::repair_window
//! [`BusBuilder::repair_timeout`]: crate::BusBuilder::repair_timeout
//! [`Stats::global_repaired`]: crate::Stats::global_repaired
//! [`Stats::global_repair_requests`]: crate::Stats::global_repair_requests
//! [`Stats::global_repair_refused`]: crate::Stats::global_repair_refused
//! [`Stats::global_repair_window_bytes`]: crate::Stats::global_repair_window_bytes
//! [`BusEvent`]: crate::BusEvent
//! [`BusEvent::Connected`]: crate::BusEvent::Connected
//! [`BusEvent::DecodeFailed`]: crate::BusEvent::DecodeFailed
//! [`BusEvent::Disconnected`]: crate::BusEvent::Disconnected
//! [`BusEvent::MessagesMissed`]: crate::BusEvent::MessagesMissed
//! [`BusEvent::Reconnected`]: crate::BusEvent::Reconnected
//! [`BusEvents`]: crate::BusEvents
//! [`Channel`]: crate::Channel
//! [`Delivery`]: crate::Delivery
//! [`Delivery::local_receivers`]: crate::Delivery::local_receivers
//! [`ListenerId`]: crate::ListenerId
//! [`MessageScope::Auto`]: crate::MessageScope::Auto
//! [`MessageScope::Global`]: crate::MessageScope::Global
//! [`MessageStream`]: crate::MessageStream
//! [`MessageStream::missed`]: crate::MessageStream::missed
//! [`Messages::add_listener`]: crate::Messages::add_listener
//! [`Messages::post_message`]: crate::Messages::post_message
//! [`Messages::remove_listener`]: crate::Messages::remove_listener
//! [`Messages::revoke_authentication`]: crate::Messages::revoke_authentication
//! [`PostError::Backpressure`]: crate::PostError::Backpressure
//! [`PostError::RedisNotEnabled`]: crate::PostError::RedisNotEnabled
//! [`PostError::ShutDown`]: crate::PostError::ShutDown
//! [`revoked_authentication_channel`]: crate::revoked_authentication_channel
//! [`RevokedAuthentication`]: crate::RevokedAuthentication
//! [`RevokedAuthentication::affects`]: crate::RevokedAuthentication::affects
//! [`Session::close`]: crate::Session::close
//! [`Session::messages`]: crate::Session::messages
//! [`Stats::channels`]: crate::Stats::channels
//! [`Stats::global_buffered`]: crate::Stats::global_buffered
//! [`Stats::global_decode_errors`]: crate::Stats::global_decode_errors
//! [`Stats::global_duplicates`]: crate::Stats::global_duplicates
//! [`Stats::global_missed`]: crate::Stats::global_missed
//! [`Stats::listener_panics`]: crate::Stats::listener_panics
//! [`Stats::stream_dropped`]: crate::Stats::stream_dropped
//! [`Stats::type_mismatches`]: crate::Stats::type_mismatches
//! [`WireFormat::Native`]: crate::WireFormat::Native
//! [`WireFormat::Serverpod`]: crate::WireFormat::Serverpod
