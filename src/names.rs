//! Interned names: small, stable ids for the names that what usher learns refers to (route,
//! funnel and tier names, upstream addresses), so that a journey step stays 64 bytes and still
//! says which route served it after that route was removed from the configuration.
//!
//! Ids are handed out once per distinct value for the life of the process and never reused, so a
//! stored id can never come to mean something else. The tables only grow, by values the operator
//! configured (never by request data); past `capacity` values, `intern` answers `None` and callers
//! record "unknown". Interning happens when a configuration is compiled; reading a name back
//! happens when someone looks (the admin API, an event), never on the request path.
//!
//! A leaf module: it imports nothing of usher's.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::Hash;

pub struct Interner<T> {
    inner: RwLock<Inner<T>>,
    capacity: usize,
}

struct Inner<T> {
    ids: HashMap<T, u16>,
    values: Vec<T>,
}

impl<T: Clone + Eq + Hash> Interner<T> {
    /// At most `capacity` distinct values, and never more than `u16::MAX` (which callers keep as
    /// "none").
    pub fn new(capacity: usize) -> Self {
        Interner {
            inner: RwLock::new(Inner {
                ids: HashMap::new(),
                values: Vec::new(),
            }),
            capacity: capacity.min(u16::MAX as usize),
        }
    }

    /// The id of `value`, handing out the next one for a value not seen before; `None` when the
    /// table is full.
    pub fn intern(&self, value: &T) -> Option<u16> {
        if let Some(id) = self.inner.read().ids.get(value) {
            return Some(*id);
        }
        let mut w = self.inner.write();
        if let Some(id) = w.ids.get(value) {
            return Some(*id);
        }
        if w.values.len() >= self.capacity {
            return None;
        }
        let id = w.values.len() as u16;
        w.values.push(value.clone());
        w.ids.insert(value.clone(), id);
        Some(id)
    }

    /// The value behind `id`, if it was ever handed out.
    pub fn get(&self, id: u16) -> Option<T> {
        self.inner.read().values.get(id as usize).cloned()
    }

    /// The id of `value` if it has one, without handing one out.
    pub fn find(&self, value: &T) -> Option<u16> {
        self.inner.read().ids.get(value).copied()
    }

    /// Every value, in id order (id = position).
    pub fn all(&self) -> Vec<T> {
        self.inner.read().values.clone()
    }

    pub fn len(&self) -> usize {
        self.inner.read().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ids_are_stable_never_reused_and_bounded() {
        let names: Interner<Arc<str>> = Interner::new(3);
        let a = names.intern(&Arc::from("checkout")).unwrap();
        let b = names.intern(&Arc::from("site")).unwrap();
        assert_ne!(a, b);
        assert_eq!(names.intern(&Arc::from("checkout")), Some(a));
        assert_eq!(names.get(a).as_deref(), Some("checkout"));
        assert_eq!(names.find(&Arc::from("site")), Some(b));
        assert_eq!(names.find(&Arc::from("other")), None);
        names.intern(&Arc::from("api")).unwrap();
        assert_eq!(names.intern(&Arc::from("one-too-many")), None);
        assert_eq!(names.len(), 3);
        assert_eq!(names.get(99), None);
        assert_eq!(names.all().len(), 3);
    }
}
