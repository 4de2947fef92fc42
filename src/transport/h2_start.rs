//! When an HTTP/2 connection's first request head has arrived, read off the bytes the client
//! sends: its preface, then frames, up to the end of the first header block (a HEADERS frame and
//! any CONTINUATION frames, the last one flagged END_HEADERS).
//!
//! An HTTP/1 request says when it starts and ends through the HTTP layer ([`super::request_started`]),
//! but Pingora hands the proxy no way back to an HTTP/2 stream's connection, so the connection
//! itself must tell when its head clock stops: once a request has begun, the connection is
//! HTTP/2's to keep (its idle time is Pingora's `h2_idle_timeout`). Until then a client that
//! sends only its preface, SETTINGS or PINGs is a connection with no request, and is held to the
//! head timeout like an HTTP/1 one, and so is one that begins a header block and trickles or
//! stalls the rest of it.
//!
//! What this deliberately isn't: a frame parser. It reads nine-byte frame headers and skips
//! payloads by their length; whether the frames make sense is Pingora's (the h2 crate's) to judge.

/// The client connection preface (RFC 9113 3.4), skipped before the first frame.
const PREFACE_LEN: usize = 24;
/// A frame header: length (24 bits), type, flags, stream id (RFC 9113 4.1).
const FRAME_HEADER_LEN: usize = 9;
/// The frame type that opens a stream with a request's header block, and the one that goes on
/// with it.
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// The flag on the frame that ends a header block.
const END_HEADERS: u8 = 0x4;

#[derive(Debug)]
pub(super) struct FirstRequest {
    /// Bytes still to pass over: the preface, or the payload of the frame just read.
    skip: usize,
    head: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// The frame being passed over is the last of the first header block.
    ends_head: bool,
}

impl FirstRequest {
    pub(super) fn new() -> Self {
        FirstRequest {
            skip: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            have: 0,
            ends_head: false,
        }
    }

    /// Takes the next bytes the client sent, in order and in any pieces; true once the first
    /// request's whole header block is among them.
    pub(super) fn begun_after(&mut self, mut bytes: &[u8]) -> bool {
        loop {
            let passed = self.skip.min(bytes.len());
            self.skip -= passed;
            bytes = &bytes[passed..];
            if self.skip > 0 {
                return false;
            }
            if self.ends_head {
                return true;
            }
            if bytes.is_empty() {
                return false;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < FRAME_HEADER_LEN {
                return false;
            }
            let (kind, flags) = (self.head[3], self.head[4]);
            self.ends_head = matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
            self.skip = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
            self.have = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        flagged(kind, 0, payload)
    }

    fn flagged(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    fn opening() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        bytes.extend(frame(0x8, &[0, 0, 0xff, 0xff])); // WINDOW_UPDATE
        bytes.extend(frame(0x6, &[7; 8])); // PING
        bytes
    }

    #[test]
    fn a_connection_that_sends_only_preface_settings_and_pings_has_no_request() {
        let mut f = FirstRequest::new();
        assert!(!f.begun_after(&opening()));
        // A payload byte that reads like HEADERS is still a payload byte.
        assert!(!f.begun_after(&frame(0x6, &[HEADERS; 8])));
    }

    #[test]
    fn the_first_header_block_ends_the_head_in_any_pieces() {
        // HEADERS without END_HEADERS, then a CONTINUATION that ends the block.
        let mut bytes = opening();
        bytes.extend(frame(HEADERS, b"\x82\x86"));
        bytes.extend(flagged(CONTINUATION, END_HEADERS, b"\x84"));
        let whole = bytes.len();
        for piece in [1, 2, 5, 9, 24, 25, whole] {
            let mut f = FirstRequest::new();
            let chunks: Vec<&[u8]> = bytes.chunks(piece).collect();
            let at = chunks.iter().position(|c| f.begun_after(c));
            // The head is in with the block's last byte.
            assert_eq!(at, Some((whole - 1) / piece), "pieces of {piece}");
        }
        // A block in one frame, with an empty payload and END_HEADERS.
        let mut f = FirstRequest::new();
        assert!(f.begun_after(&[&opening()[..], &flagged(HEADERS, END_HEADERS, b"")].concat()));
    }

    #[test]
    fn a_header_block_begun_and_stalled_is_no_request_yet() {
        let mut f = FirstRequest::new();
        assert!(!f.begun_after(&opening()));
        // The frame header alone, and most of its payload, then nothing.
        let headers = flagged(HEADERS, END_HEADERS, &[0x82; 100]);
        assert!(!f.begun_after(&headers[..FRAME_HEADER_LEN]));
        assert!(!f.begun_after(&headers[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 99]));
        assert!(f.begun_after(&headers[FRAME_HEADER_LEN + 99..]));
        // A block that never ends: CONTINUATIONs without END_HEADERS.
        let mut f = FirstRequest::new();
        assert!(!f.begun_after(&opening()));
        assert!(!f.begun_after(&frame(HEADERS, b"\x82")));
        for _ in 0..10 {
            assert!(!f.begun_after(&frame(CONTINUATION, b"\x82")));
        }
    }

    #[test]
    fn the_preface_alone_or_cut_short_is_not_a_request() {
        let mut f = FirstRequest::new();
        assert!(!f.begun_after(&PREFACE[..10]));
        assert!(!f.begun_after(&PREFACE[10..]));
        assert!(!f.begun_after(&[0, 0, 3, HEADERS - 1]));
        assert!(!f.begun_after(&[0, 0, 0, 0, 0, HEADERS, HEADERS, HEADERS]));
        assert!(f.begun_after(&flagged(HEADERS, END_HEADERS, b"\x82")));
    }
}
