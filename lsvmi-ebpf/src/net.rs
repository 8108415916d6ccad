//! Network programs on classic tracepoints (tcp, sock, skb). Each record's field
//! offsets come from the agent ([`NetOffsets`], read from tracefs `format` files), so no
//! kernel struct layout is assumed. Counters go to one per-CPU value read on the tick;
//! discrete events (retransmit, reset, drop) also go to a ring buffer without waking
//! the agent, which drains it on its tick.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use lsvmi_common::{
    hindsight::{NET_BASE, Record},
    net::{
        ABSENT, CpuNet, DROP_REASONS, EVENT_DROP, EVENT_RECEIVE_RESET, EVENT_RETRANSMIT, EVENT_SEND_RESET,
        EVENTS_BYTES, NetEvent, NetOffsets, TCP_STATES, TpFields,
    },
};

use crate::hindsight;

#[map]
static NET_CPU: PerCpuArray<CpuNet> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Field offsets of each tracepoint, set by the agent at load.
#[unsafe(no_mangle)]
static NET_OFFSETS: NetOffsets = NetOffsets::NONE;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// This kernel's field offsets of one tracepoint.
macro_rules! fields {
    ($tp:ident) => {
        // SAFETY: reading a static the loader patches; volatile so it is not constant-folded.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(NET_OFFSETS.$tp)) }
    };
}

/// Read a field, or None when this kernel's record lacks it or the read fails.
#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == ABSENT {
        return None;
    }
    // SAFETY: read_at goes through bpf_probe_read_kernel, which checks the address.
    unsafe { ctx.read_at(off as usize) }.ok()
}

#[inline(always)]
fn cpu_state() -> Option<&'static mut CpuNet> {
    // SAFETY: this CPU's map value; preemption is off in a tracepoint.
    NET_CPU.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `i & mask`, done where the verifier sees it. LLVM checks a range on one register and
/// indexes with a copy the verifier cannot link to the check, and it drops a plain mask
/// it can prove redundant; a volatile round-trip through the stack keeps the mask.
#[inline(always)]
fn bounded(i: usize, mask: usize) -> usize {
    // SAFETY: reading a local.
    unsafe { core::ptr::read_volatile(&i) & mask }
}

/// Slot of a TCP state (TCP_STATES is a power of two); out-of-range states go to 0.
#[inline(always)]
fn state_slot(state: i32) -> usize {
    bounded(if state > 0 && (state as usize) < TCP_STATES { state as usize } else { 0 }, TCP_STATES - 1)
}

fn new_event(kind: u16) -> NetEvent {
    NetEvent {
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        kind,
        family: 0,
        sport: 0,
        dport: 0,
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() },
        pid: bpf_get_current_pid_tgid() as u32,
        detail: 0,
        protocol: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// A `struct sockaddr_in`/`sockaddr_in6` at `off`: (family, port in host order, address).
#[inline(always)]
fn sockaddr(ctx: &TracePointContext, off: u16) -> Option<(u16, u16, [u8; 16])> {
    let family: u16 = read(ctx, off)?;
    let port: u16 = u16::from_be(read(ctx, off + 2)?);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = read(ctx, off + 4)?;
        addr[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        addr = read(ctx, off + 8)?;
    }
    Some((family, port, addr))
}

/// Fill the 4-tuple from whichever layout the tracepoint has.
#[inline(always)]
fn fill_addresses(ctx: &TracePointContext, f: &TpFields, ev: &mut NetEvent) {
    if f.ssockaddr != ABSENT {
        if let Some((family, port, addr)) = sockaddr(ctx, f.ssockaddr) {
            ev.family = family;
            ev.sport = port;
            ev.saddr = addr;
        }
        if let Some((_, port, addr)) = sockaddr(ctx, f.dsockaddr) {
            ev.dport = port;
            ev.daddr = addr;
        }
        return;
    }
    ev.family = read(ctx, f.family).unwrap_or(0);
    // These records store ports already in host order (ntohs in TP_fast_assign).
    ev.sport = read(ctx, f.sport).unwrap_or(0);
    ev.dport = read(ctx, f.dport).unwrap_or(0);
    if ev.family == AF_INET6 {
        ev.saddr = read(ctx, f.saddr_v6).unwrap_or([0; 16]);
        ev.daddr = read(ctx, f.daddr_v6).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = read(ctx, f.saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = read(ctx, f.daddr).unwrap_or([0; 4]);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
}

/// Queue a record without waking anyone; a full buffer is counted (and said at debug
/// level through aya-log, which the agent only reads when run with debug logging).
#[inline(always)]
fn submit(ctx: &TracePointContext, cpu: &mut CpuNet, ev: &NetEvent) {
    if NET_EVENTS.output::<NetEvent>(ev, BPF_RB_NO_WAKEUP as u64).is_err() {
        cpu.events_lost += 1;
        debug!(ctx, "NET_EVENTS full: event of kind {} lost ({} lost on this CPU)", ev.kind, cpu.events_lost);
    }
    if hindsight::thresholds().net != 0 {
        keep(ev);
    }
}

/// Every network event goes to the hindsight ring too (they are rare on a healthy host).
#[inline(never)]
fn keep(ev: &NetEvent) {
    hindsight::keep(Record {
        value: (u64::from(ev.sport) << 16) | u64::from(ev.dport),
        tid: ev.pid,
        kind: NET_BASE + ev.kind,
        detail: ev.detail as u16,
        addr: if ev.family == AF_INET {
            u32::from_ne_bytes([ev.daddr[0], ev.daddr[1], ev.daddr[2], ev.daddr[3]])
        } else {
            0
        },
        comm: ev.comm,
        ..Record::default()
    });
}

/// A socket event counted by its TCP state, with a record: retransmit, reset sent.
#[inline(always)]
fn by_state(
    ctx: &TracePointContext,
    f: &TpFields,
    kind: u16,
    counters: impl FnOnce(&mut CpuNet) -> &mut [u64; TCP_STATES],
) {
    let Some(cpu) = cpu_state() else { return };
    let state: i32 = read(ctx, f.state).unwrap_or(0);
    counters(cpu)[state_slot(state)] += 1;
    let mut ev = new_event(kind);
    ev.detail = state as u32;
    fill_addresses(ctx, f, &mut ev);
    submit(ctx, cpu, &ev);
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    by_state(&ctx, &fields!(retransmit), EVENT_RETRANSMIT, |c| &mut c.retransmits);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    by_state(&ctx, &fields!(send_reset), EVENT_SEND_RESET, |c| &mut c.resets_sent);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let Some(cpu) = cpu_state() else { return 0 };
    let f = fields!(receive_reset);
    cpu.resets_received += 1;
    let mut ev = new_event(EVENT_RECEIVE_RESET);
    fill_addresses(&ctx, &f, &mut ev);
    submit(&ctx, cpu, &ev);
    0
}

/// TCP state transitions only (the tracepoint also fires for other protocols).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let f = fields!(set_state);
    if read::<u16>(&ctx, f.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(cpu) = cpu_state() else { return 0 };
    let from = state_slot(read(&ctx, f.state).unwrap_or(0));
    let to = state_slot(read(&ctx, f.value).unwrap_or(0));
    if let Some(slot) = cpu.transitions.get_mut(bounded(from * TCP_STATES + to, TCP_STATES * TCP_STATES - 1)) {
        *slot += 1;
    }
    0
}

/// Smoothed RTT at each tcp_probe (a received ACK on an established socket).
#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let f = fields!(probe);
    let Some(srtt_us) = read::<u32>(&ctx, f.value) else { return 0 };
    if let Some(cpu) = cpu_state() {
        cpu.srtt.record(u64::from(srtt_us) * 1000);
    }
    0
}

/// A packet freed as dropped, with the kernel's reason (enum skb_drop_reason).
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let Some(cpu) = cpu_state() else { return 0 };
    let f = fields!(kfree_skb);
    let reason: u32 = read(&ctx, f.value).unwrap_or(0);
    let slot = bounded((reason as usize).min(DROP_REASONS - 1), DROP_REASONS - 1);
    cpu.drops[slot] += 1;
    let mut ev = new_event(EVENT_DROP);
    ev.detail = reason;
    ev.protocol = u32::from(read::<u16>(&ctx, f.protocol).unwrap_or(0));
    submit(&ctx, cpu, &ev);
    0
}
