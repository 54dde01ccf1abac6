//! Byte-coded operation sequences on a local bus, checked step by step against the reference
//! model shared with `tests/model.rs`: the same comparison as the proptest, with libFuzzer's
//! coverage guidance choosing the sequences.
//!
//! Encoding: one byte picks the operation (modulo their number), the following bytes are its
//! arguments; a missing byte reads as 0, so every input is a valid sequence.

#![no_main]

#[path = "../../tests/support/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::{run, Op, Ty};

/// At most this many operations per input, so one input stays fast.
const MAX_OPS: usize = 512;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn ty(&mut self) -> Ty {
        if self.u8() & 1 == 0 {
            Ty::A
        } else {
            Ty::B
        }
    }

    fn op(&mut self) -> Op {
        match self.u8() % 14 {
            0 => Op::AddListener { who: self.u8(), ty: self.ty(), ch: self.u8() % 3 },
            1 => {
                let (who, pick, wrong) = (self.u8(), self.u16(), self.u8());
                let wrong = (wrong & 0x80 != 0).then_some(wrong % 4);
                Op::RemoveListener { who, pick, wrong }
            }
            2 | 3 => Op::Post { who: self.u8(), ty: self.ty(), ch: self.u8() % 3 },
            4 => Op::PostThroughHandle { pick: self.u16() },
            5 => Op::CreateStream { who: self.u8(), ty: self.ty(), ch: self.u8() % 3 },
            6 => Op::DropStream { pick: self.u16() },
            7 => Op::Drain { pick: self.u16(), max: self.u8() },
            8 => Op::CloseSession { pick: self.u8() },
            9 => Op::DropSession { pick: self.u8() },
            10 => Op::OpenSession,
            11 => Op::CreateHandle { ty: self.ty(), ch: self.u8() % 3 },
            12 => Op::DropHandle { pick: self.u16() },
            _ => Op::Post { who: 0, ty: Ty::A, ch: self.u8() % 3 },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes(data);
    let mut ops = Vec::new();
    while !bytes.0.is_empty() && ops.len() < MAX_OPS {
        ops.push(bytes.op());
    }
    if let Err(mismatch) = run(&ops) {
        panic!("the bus and the model disagree: {mismatch}\nops: {ops:#?}");
    }
});
