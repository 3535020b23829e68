//! The unit tests of [`super`] (no `unsafe` here: they use its safe functions).

use super::*;
use std::os::fd::AsRawFd;

#[test]
fn stray_descriptors_become_close_on_exec() {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap();
    for fd in [&r, &w] {
        assert!(
            !rustix::io::fcntl_getfd(fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
    }
    cloexec_from(r.as_raw_fd().min(w.as_raw_fd())).unwrap();
    for fd in [&r, &w] {
        assert!(
            rustix::io::fcntl_getfd(fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
    }
}

#[test]
fn hex_digits_and_id_blocks() {
    for n in [
        0,
        1,
        0xa,
        0xf0,
        0x0123_4567_89ab_cdef,
        u64::MAX,
        1 << 63,
        0xdead_beef,
    ] {
        assert_eq!(hex16(n), *format!("{n:016x}").as_bytes(), "{n:x}");
    }
    for first in [0, 64, 0x1c0, u64::MAX - 63] {
        let mut b = IdBlock::new(0x0123_4567_89ab_cdef, first);
        let mut taken = Vec::new();
        for i in 0..ID_BLOCK {
            assert!(!b.is_empty());
            let want = format!("0123456789abcdef-{:016x}", first + i as u64);
            let id = b.take();
            assert_eq!(id.as_bytes(), want.as_bytes());
            taken.push(id);
        }
        assert!(b.is_empty());
        // Each id keeps its own bytes after the block is gone.
        drop(b);
        assert_eq!(
            taken[1].as_bytes(),
            format!("0123456789abcdef-{:016x}", first + 1).as_bytes()
        );
    }
}

#[test]
fn a_box_slot_hands_over_each_box_once() {
    let slot = BoxSlot::new();
    assert!(slot.take().is_none());
    slot.put(Box::new(1));
    // A second put drops the first box (counted by an Arc's strong count below).
    let shared = std::sync::Arc::new(());
    slot.put(Box::new(2));
    assert_eq!(slot.take().map(|b| *b), Some(2));
    assert!(slot.take().is_none());
    let held = BoxSlot::new();
    held.put(Box::new(shared.clone()));
    held.put(Box::new(shared.clone()));
    assert_eq!(std::sync::Arc::strong_count(&shared), 2);
    // Across threads, and dropped with the slot.
    let held = std::sync::Arc::new(held);
    let h = held.clone();
    std::thread::spawn(move || h.put(Box::new(std::sync::Arc::new(()))))
        .join()
        .unwrap();
    drop(held);
    assert_eq!(std::sync::Arc::strong_count(&shared), 1);
    // Put only into an empty slot: a full one hands the box back, untouched.
    let slot = BoxSlot::new();
    assert!(!slot.is_full());
    assert!(slot.put_if_empty(Box::new(shared.clone())).is_ok());
    assert!(slot.is_full());
    let back = slot.put_if_empty(Box::new(shared.clone())).unwrap_err();
    assert_eq!(std::sync::Arc::strong_count(&shared), 3);
    drop(back);
    assert_eq!(
        slot.take().map(|b| std::sync::Arc::ptr_eq(&b, &shared)),
        Some(true)
    );
    assert!(!slot.is_full());
    assert_eq!(std::sync::Arc::strong_count(&shared), 1);
}
