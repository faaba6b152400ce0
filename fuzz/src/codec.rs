//! The byte encoding of inputs that are sequences of operations: written by generators, read
//! back by targets (and by `--replay`). Reading never fails: a truncated field ends the input.

pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    /// Starts length-prefixed bytes written in place; finish with [`Writer::end_bytes`].
    pub fn begin_bytes(&mut self) -> usize {
        self.u32(0);
        self.0.len()
    }
    pub fn end_bytes(&mut self, start: usize) {
        let n = (self.0.len() - start) as u32;
        self.0[start - 4..start].copy_from_slice(&n.to_le_bytes());
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(v)
    }
    pub fn u16(&mut self) -> Option<u16> {
        let v = self.buf.get(..2)?;
        let v = u16::from_le_bytes([v[0], v[1]]);
        self.buf = &self.buf[2..];
        Some(v)
    }
    pub fn u32(&mut self) -> Option<u32> {
        let v = self.buf.get(..4)?;
        let v = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        self.buf = &self.buf[4..];
        Some(v)
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let v = self.buf.get(..n)?;
        self.buf = &self.buf[n..];
        Some(v)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}
