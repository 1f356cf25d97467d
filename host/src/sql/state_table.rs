//! The aggregation's running state: one row per group — its key in Arrow's row format (binary,
//! comparable byte for byte) and each aggregate's state fields — addressed by group id, kept in
//! append-only pages of Arrow arrays, with a hash index from key bytes to group id that holds
//! only the 4-byte ids (keys are compared where they lie, in the pages), in 64 shards that
//! grow one at a time.
//!
//! A batch interns its keys, reads the rows of the groups it touches, merges its input into
//! them, and appends the new rows as a page; the old rows become garbage. So a batch costs what
//! it touches, not what the table holds. To keep reads cheap and memory bounded:
//! - the last two pages merge while the older holds at most twice the live rows of the newer
//!   and together they fit in a full page (`PAGE_ROWS`): a tail of at most ~log2(PAGE_ROWS)
//!   pages after the full ones, each row merged O(log) times, and no merge (so no transient
//!   copy) larger than a page;
//! - a page more than half garbage is rewritten with its live rows.
//!
//! Groups can be removed (state evicted by the watermark): the key leaves the index, its row
//! becomes garbage and its group id is handed out again to a later new key, so memory follows
//! the groups alive, not the groups ever seen.
//!
//! Each page keeps a bitmap of its live rows; a snapshot is the pages as they are (shared, not
//! copied) with a copy of those bitmaps, filtered off the query loop.

use std::hash::BuildHasher;

use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::{ArrowError, SchemaRef};
use hashbrown::HashTable;

/// Where a group's row is: page and row; for a key interned by the running batch, `PENDING` and
/// its index in the pending keys; `NONE` for a free group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    page: u32,
    row: u32,
}

const NONE: Loc = Loc { page: u32::MAX, row: u32::MAX };
const PENDING: u32 = u32::MAX - 1;

impl Loc {
    fn has_row(self) -> bool {
        self.page < PENDING
    }
}

struct Page {
    rows: RecordBatch,
    /// Column 0 of `rows`: the keys.
    keys: BinaryArray,
    /// The group id of each row.
    gids: Vec<u32>,
    /// Rows still current.
    live: usize,
    /// Which rows are still current, a bit per row.
    bits: Vec<u64>,
}

impl Page {
    fn new(rows: RecordBatch, gids: Vec<u32>) -> Result<Self, ArrowError> {
        let keys = rows
            .column(0)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError("state rows must start with binary keys".into()))?;
        let n = gids.len();
        let mut bits = vec![u64::MAX; n.div_ceil(64)];
        if let Some(last) = bits.last_mut()
            && !n.is_multiple_of(64)
        {
            *last = (1u64 << (n % 64)) - 1;
        }
        Ok(Page { rows, keys, live: n, gids, bits })
    }

    /// Row `row` is no longer current.
    fn kill(&mut self, row: u32) {
        self.bits[row as usize / 64] &= !(1u64 << (row % 64));
        self.live -= 1;
    }

    /// The live rows as a filter mask, or `None` when all are live.
    fn mask(&self) -> Option<arrow_array::BooleanArray> {
        (self.live < self.gids.len()).then(|| {
            let buffer = arrow_buffer::Buffer::from_vec(self.bits.clone());
            arrow_array::BooleanArray::new(arrow_buffer::BooleanBuffer::new(buffer, 0, self.gids.len()), None)
        })
    }
}

/// Keys of groups interned since their batch began, which have no row yet.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Pending keys whose group has no row yet.
    unresolved: usize,
}

impl Pending {
    fn get(&self, i: u32) -> &[u8] {
        let i = i as usize;
        match self.ends.get(i) {
            Some(end) => &self.bytes[if i == 0 { 0 } else { self.ends[i - 1] }..*end],
            None => &[],
        }
    }
    /// Adds a key; returns its index.
    fn push(&mut self, key: &[u8]) -> u32 {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
        self.unresolved += 1;
        (self.ends.len() - 1) as u32
    }
}

fn key_of<'a>(pages: &'a [Page], locs: &[Loc], pending: &'a Pending, gid: u32) -> &'a [u8] {
    let l = locs[gid as usize];
    if l.has_row() {
        pages[l.page as usize].keys.value(l.row as usize)
    } else if l.page == PENDING {
        pending.get(l.row)
    } else {
        &[]
    }
}

/// Bits of a key's hash that choose its index shard.
const SHARD_BITS: u32 = 6;

/// The key index: group ids in `2^SHARD_BITS` hash tables, a key's table chosen by bits 32.. of
/// its hash (hashbrown takes a bucket from the low bits and a tag from the top seven). Growing
/// the index rehashes one shard, a 64th of it, at a time (each rehashed entry looks its key up
/// in the pages): a batch that fills a table pays for that table, not for the whole index. As
/// one table, the 100-row batch that took a state past 1.8 M keys took 180 ms.
struct Index {
    shards: Vec<HashTable<u32>>,
}

impl Index {
    fn new() -> Self {
        Index { shards: (0..1 << SHARD_BITS).map(|_| HashTable::new()).collect() }
    }

    fn shard(&mut self, hash: u64) -> &mut HashTable<u32> {
        &mut self.shards[(hash >> 32) as usize & ((1 << SHARD_BITS) - 1)]
    }

    fn allocation_size(&self) -> usize {
        self.shards.iter().map(HashTable::allocation_size).sum()
    }
}

/// State rows by group id, and the key index.
pub(super) struct StateTable {
    /// `key` (binary), then the state fields.
    schema: SchemaRef,
    index: Index,
    hasher: foldhash::fast::FixedState,
    /// Page slots (a freed slot holds an empty page until it is used again).
    pages: Vec<Page>,
    /// Slots in use, oldest page first.
    order: Vec<u32>,
    free_pages: Vec<u32>,
    /// Per group id handed out.
    locs: Vec<Loc>,
    pending: Pending,
    /// Group ids with a row.
    len: usize,
    /// Group ids of removed groups, to hand out again.
    free: Vec<u32>,
    /// Bytes of page arrays let go since the allocator last gave its free pages back.
    released: usize,
    /// `memory()` when the allocator last gave its free pages back.
    released_at: usize,
}

/// Rows below which a page is never rewritten for garbage alone.
const MIN_COMPACT_ROWS: usize = 1024;
/// Pages do not grow past this many rows by merging.
pub(super) const PAGE_ROWS: usize = 1 << 18;
/// Page bytes let go, or bytes the table grew by, after which the allocator is asked to give
/// its free pages back: about a full page of short keys with a count. A trim costs ~1 ms on a
/// 200 MB heap and what it gives back is faulted in again when reused (trimming after every
/// large batch cost the word count, whose state stays small, 5–15%); see `crate::mem`.
const RELEASE_BYTES: usize = 4 << 20;

impl StateTable {
    /// A table of rows of `schema`: a non-null binary key column, then state fields.
    pub(super) fn new(schema: SchemaRef) -> Self {
        StateTable {
            schema,
            index: Index::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x5EED_51C3),
            pages: Vec::new(),
            order: Vec::new(),
            free_pages: Vec::new(),
            locs: Vec::new(),
            pending: Pending::default(),
            len: 0,
            free: Vec::new(),
            released: 0,
            released_at: 0,
        }
    }

    /// The schema of its rows.
    pub(super) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Groups with a row.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Group ids handed out (groups with a row, and those of the running batch).
    pub(super) fn num_gids(&self) -> usize {
        self.locs.len()
    }

    /// Whether group `gid` has a row.
    pub(super) fn contains(&self, gid: u32) -> bool {
        self.locs.get(gid as usize).is_some_and(|l| l.has_row())
    }

    /// The group id of each key, handing out new ids to new keys.
    pub(super) fn intern<'k>(&mut self, keys: impl Iterator<Item = &'k [u8]>, out: &mut Vec<usize>) {
        let StateTable { index, hasher, pages, locs, pending, free, .. } = self;
        for key in keys {
            let hash = hasher.hash_one(key);
            let shard = index.shard(hash);
            let gid = match shard.find(hash, |g| key_of(pages, locs, pending, *g) == key) {
                Some(g) => *g,
                None => {
                    let at = Loc { page: PENDING, row: pending.push(key) };
                    let g = match free.pop() {
                        Some(g) => {
                            locs[g as usize] = at;
                            g
                        }
                        None => {
                            locs.push(at);
                            (locs.len() - 1) as u32
                        }
                    };
                    shard.insert_unique(hash, g, |g| hasher.hash_one(key_of(pages, locs, pending, *g)));
                    g
                }
            };
            out.push(gid as usize);
        }
    }

    /// The key bytes of `gids`, as a binary array.
    pub(super) fn keys(&self, gids: &[u32]) -> BinaryArray {
        gids.iter().map(|g| Some(key_of(&self.pages, &self.locs, &self.pending, *g))).collect()
    }

    /// The rows of `gids` (each must have one), in that order.
    pub(super) fn get(&self, gids: &[u32]) -> Result<RecordBatch, ArrowError> {
        let at: Vec<(usize, usize)> = gids
            .iter()
            .map(|g| {
                let l = self.locs[*g as usize];
                (l.page as usize, l.row as usize)
            })
            .collect();
        self.gather(&at)
    }

    /// Every group's row, in group-id order.
    pub(super) fn all(&self) -> Result<RecordBatch, ArrowError> {
        let at: Vec<(usize, usize)> =
            self.locs.iter().filter(|l| l.has_row()).map(|l| (l.page as usize, l.row as usize)).collect();
        self.gather(&at)
    }

    fn gather(&self, at: &[(usize, usize)]) -> Result<RecordBatch, ArrowError> {
        let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(at.len()));
        if self.pages.len() == 1 {
            let idx = arrow_array::UInt32Array::from_iter_values(at.iter().map(|(_, r)| *r as u32));
            let cols = self.pages[0]
                .rows
                .columns()
                .iter()
                .map(|c| arrow_select::take::take(c, &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            return RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts);
        }
        let mut cols = Vec::with_capacity(self.schema.fields().len());
        for c in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn Array> = self.pages.iter().map(|p| p.rows.column(c).as_ref()).collect();
            cols.push(arrow_select::interleave::interleave(&arrays, at)?);
        }
        RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)
    }

    /// Makes `rows` (key bytes, then state fields) the current rows of `gids` (row i belongs to
    /// `gids[i]`).
    pub(super) fn append(&mut self, gids: Vec<u32>, rows: RecordBatch) -> Result<(), ArrowError> {
        if gids.is_empty() {
            return Ok(());
        }
        let new = Page::new(rows, gids)?;
        let page = match self.free_pages.last() {
            Some(p) => *p,
            None => self.pages.len() as u32,
        };
        for (row, g) in new.gids.iter().enumerate() {
            let old = std::mem::replace(&mut self.locs[*g as usize], Loc { page, row: row as u32 });
            if old.has_row() {
                self.pages[old.page as usize].kill(old.row);
            } else {
                self.len += 1;
                if old.page == PENDING {
                    self.pending.unresolved -= 1;
                }
            }
        }
        if self.free_pages.pop().is_some() {
            self.pages[page as usize] = new;
        } else {
            self.pages.push(new);
        }
        self.order.push(page);
        if self.pending.unresolved == 0 && !self.pending.ends.is_empty() {
            self.pending = Pending::default();
        }
        self.maintain()
    }

    /// Removes groups `gids` (each must have a row): their keys leave the index, their rows
    /// become garbage, and their ids are handed out again.
    pub(super) fn remove(&mut self, gids: &[u32]) -> Result<(), ArrowError> {
        for &g in gids {
            let l = self.locs[g as usize];
            if !l.has_row() {
                return Err(ArrowError::InvalidArgumentError(format!("state group {g} has no row to remove")));
            }
            let key = self.pages[l.page as usize].keys.value(l.row as usize);
            let hash = self.hasher.hash_one(key);
            if let Ok(entry) = self.index.shard(hash).find_entry(hash, |x| *x == g) {
                entry.remove();
            }
            self.pages[l.page as usize].kill(l.row);
            self.locs[g as usize] = NONE;
            self.len -= 1;
            self.free.push(g);
        }
        if gids.is_empty() { Ok(()) } else { self.maintain() }
    }

    /// Frees page slot `p` (no live rows).
    fn drop_page(&mut self, p: u32) -> Result<(), ArrowError> {
        self.replace_page(p, Page::new(RecordBatch::new_empty(self.schema.clone()), Vec::new())?);
        self.order.retain(|x| *x != p);
        self.free_pages.push(p);
        Ok(())
    }

    fn maintain(&mut self) -> Result<(), ArrowError> {
        let empty: Vec<u32> = self.order.iter().copied().filter(|p| self.pages[*p as usize].live == 0).collect();
        for p in empty {
            self.drop_page(p)?;
        }
        while self.order.len() >= 2 {
            let n = self.order.len();
            let (a, b) = (self.order[n - 2], self.order[n - 1]);
            let (older, newer) = (self.pages[a as usize].live, self.pages[b as usize].live);
            if older > 2 * newer || older + newer > PAGE_ROWS {
                break;
            }
            self.rewrite(&[a, b], a)?;
            self.drop_page(b)?;
        }
        for i in 0..self.order.len() {
            let p = self.order[i];
            let page = &self.pages[p as usize];
            let rows = page.gids.len();
            if rows >= MIN_COMPACT_ROWS && page.live * 2 < rows {
                self.rewrite(&[p], p)?;
            }
        }
        // Merged pages leave free memory between live pages, which glibc keeps resident.
        if self.released >= RELEASE_BYTES {
            self.release_free_memory();
        }
        Ok(())
    }

    /// Gives the allocator's free pages back to the system if the table has grown by
    /// `RELEASE_BYTES` since the last time: called before a batch, when what the last one left
    /// (its output, merged pages, index shards rehashed into larger ones) is free under the
    /// grown state, and before the batch's own working memory goes on top of it.
    pub(super) fn release_after_growth(&mut self) {
        if self.memory() >= self.released_at + RELEASE_BYTES {
            self.release_free_memory();
        }
    }

    /// Counts `bytes` the running batch let go of outside the table (its key table), giving the
    /// allocator's free pages back once `RELEASE_BYTES` are counted: a batch of new keys frees
    /// a key table as large as its page, just before the page is built.
    pub(super) fn let_go(&mut self, bytes: usize) {
        self.released += bytes;
        if self.released >= RELEASE_BYTES {
            self.release_free_memory();
        }
    }

    fn release_free_memory(&mut self) {
        let gave_back = crate::mem::release_free_memory();
        self.released = 0;
        self.released_at = self.memory();
        tracing::trace!(bytes = self.released_at, gave_back, "state: allocator's free pages given back");
    }

    /// Rewrites the live rows of page slots `pages` (oldest first) into slot `into`.
    fn rewrite(&mut self, pages: &[u32], into: u32) -> Result<(), ArrowError> {
        let mut at = Vec::new();
        let mut gids = Vec::new();
        for (i, &p) in pages.iter().enumerate() {
            for (row, g) in self.pages[p as usize].gids.iter().enumerate() {
                if self.locs[*g as usize] == (Loc { page: p, row: row as u32 }) {
                    at.push((i, row));
                    gids.push(*g);
                }
            }
        }
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn Array> =
                pages.iter().map(|p| self.pages[*p as usize].rows.column(c).as_ref()).collect();
            cols.push(arrow_select::interleave::interleave(&arrays, &at)?);
        }
        let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(at.len()));
        let rows = RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)?;
        for (row, g) in gids.iter().enumerate() {
            self.locs[*g as usize] = Loc { page: into, row: row as u32 };
        }
        self.replace_page(into, Page::new(rows, gids)?);
        Ok(())
    }

    /// Puts `page` in slot `p`, counting the old page's arrays as let go.
    fn replace_page(&mut self, p: u32, page: Page) {
        let old = std::mem::replace(&mut self.pages[p as usize], page);
        self.released += old.rows.get_array_memory_size();
    }

    /// The pages, oldest first, each with a mask of its live rows (`None`: all live); their live
    /// rows are the state (a snapshot). Shares the arrays, copies the masks.
    pub(super) fn pages(&self) -> Vec<(RecordBatch, Option<arrow_array::BooleanArray>)> {
        self.order.iter().map(|p| &self.pages[*p as usize]).map(|p| (p.rows.clone(), p.mask())).collect()
    }

    /// Bytes held: the pages' arrays, group ids, locations and the index.
    pub(super) fn memory(&self) -> usize {
        let pages: usize = self
            .pages
            .iter()
            .map(|p| p.rows.get_array_memory_size() + p.gids.capacity() * 4 + p.bits.capacity() * 8)
            .sum();
        pages
            + self.locs.capacity() * std::mem::size_of::<Loc>()
            + self.free.capacity() * 4
            + self.index.allocation_size()
            + self.pending.bytes.capacity()
            + self.pending.ends.capacity() * 8
    }

    /// Pages held (for tests).
    #[cfg(test)]
    fn page_count(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("key", DataType::Binary, false), Field::new("v", DataType::Int64, false)]))
    }

    fn contents(b: &RecordBatch) -> Vec<(Vec<u8>, i64)> {
        let k = b.column(0).as_any().downcast_ref::<BinaryArray>().unwrap();
        let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        (0..b.num_rows()).map(|i| (k.value(i).to_vec(), v.value(i))).collect()
    }

    /// Random batches of keys against a plain map: interning, reads, full scans and the
    /// snapshot (pages read last-row-wins) agree with it, and pages and rows stay bounded.
    #[test]
    fn matches_a_map_and_stays_bounded() {
        let mut t = StateTable::new(schema());
        let mut truth: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let run = |t: &mut StateTable, truth: &mut BTreeMap<Vec<u8>, i64>, keys: Vec<Vec<u8>>, v: i64| {
            let mut ids = Vec::new();
            t.intern(keys.iter().map(Vec::as_slice), &mut ids);
            // A key seen twice in a batch gets one id.
            let mut gids: Vec<u32> = Vec::new();
            let mut rows: Vec<&[u8]> = Vec::new();
            let mut seen: std::collections::HashMap<&[u8], usize> = Default::default();
            for (k, g) in keys.iter().zip(&ids) {
                let first = *seen.entry(k.as_slice()).or_insert(*g);
                assert_eq!(first, *g, "one id per key");
                if !gids.contains(&(*g as u32)) {
                    gids.push(*g as u32);
                    rows.push(k);
                }
            }
            assert_eq!(gids.len(), seen.len(), "distinct keys get distinct ids");
            assert_eq!(t.keys(&gids).iter().map(|k| k.unwrap()).collect::<Vec<_>>(), rows);
            let batch = RecordBatch::try_new(
                schema(),
                vec![Arc::new(BinaryArray::from(rows.clone())), Arc::new(Int64Array::from(vec![v; rows.len()]))],
            )
            .unwrap();
            t.append(gids, batch).unwrap();
            for k in rows {
                truth.insert(k.to_vec(), v);
            }
        };
        let groups = 20_000u64;
        for chunk in 0..groups / 100 {
            run(
                &mut t,
                &mut truth,
                (chunk * 100..chunk * 100 + 100).map(|g| format!("g{g}").into_bytes()).collect(),
                0,
            );
        }
        for batch in 1..3000i64 {
            let keys = (0..1 + next(100)).map(|_| format!("g{}", next(groups + batch as u64)).into_bytes()).collect();
            run(&mut t, &mut truth, keys, batch);
            // Every few batches, remove some groups (as the watermark evicts them).
            if batch % 7 == 0 {
                let victims: Vec<Vec<u8>> = (0..next(300)).map(|_| format!("g{}", next(groups)).into_bytes()).collect();
                let victims: std::collections::BTreeSet<Vec<u8>> =
                    victims.into_iter().filter(|k| truth.contains_key(k)).collect();
                let mut ids = Vec::new();
                t.intern(victims.iter().map(Vec::as_slice), &mut ids);
                let gids: Vec<u32> = ids.iter().map(|g| *g as u32).collect();
                t.remove(&gids).unwrap();
                for k in &victims {
                    truth.remove(k);
                }
            }
            let bound = 2 + 2 * (t.len() as f64).log2() as usize + t.len() / PAGE_ROWS;
            assert!(t.page_count() <= bound, "{} pages", t.page_count());
        }
        assert_eq!(t.len(), truth.len());
        // The keys spread over every shard of the index, and it holds exactly the live ones.
        assert!(t.index.shards.iter().all(|s| !s.is_empty()), "an index shard is empty");
        assert_eq!(t.index.shards.iter().map(HashTable::len).sum::<usize>(), truth.len());
        let mut all = contents(&t.all().unwrap());
        all.sort();
        assert_eq!(all, truth.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
        let some: Vec<Vec<u8>> = truth.keys().step_by(truth.len() / 3).rev().cloned().collect();
        let mut ids = Vec::new();
        t.intern(some.iter().map(Vec::as_slice), &mut ids);
        let gids: Vec<u32> = ids.iter().map(|g| *g as u32).collect();
        let got = contents(&t.get(&gids).unwrap());
        let want: Vec<(Vec<u8>, i64)> = some.iter().map(|k| (k.clone(), truth[k])).collect();
        assert_eq!(got, want);
        let mut snapshot: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for (p, mask) in t.pages() {
            let live = match mask {
                Some(m) => arrow_select::filter::filter_record_batch(&p, &m).unwrap(),
                None => p,
            };
            for (k, v) in contents(&live) {
                assert!(snapshot.insert(k, v).is_none(), "one live row per key");
            }
        }
        assert_eq!(snapshot, truth);
        let rows_held: usize = t.pages().iter().map(|(p, _)| p.num_rows()).sum();
        assert!(rows_held <= 2 * truth.len() + MIN_COMPACT_ROWS * t.page_count(), "{rows_held} rows held");
    }

    /// Bytes let go (merged pages, a batch's key table) and growth are counted towards giving
    /// the allocator's free pages back, and the count starts again after each time.
    #[test]
    fn counts_memory_let_go_and_grown_towards_a_trim() {
        let mut t = StateTable::new(schema());
        // Two pages of 100 k rows merge into one: the two old ones are let go.
        for (i, from) in [0usize, 100_000].into_iter().enumerate() {
            let keys: Vec<Vec<u8>> = (from..from + 100_000).map(|g| format!("key{g:09}").into_bytes()).collect();
            let mut ids = Vec::new();
            t.intern(keys.iter().map(Vec::as_slice), &mut ids);
            let rows = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(BinaryArray::from(keys.iter().map(Vec::as_slice).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(vec![i as i64; keys.len()])),
                ],
            )
            .unwrap();
            t.append(ids.iter().map(|g| *g as u32).collect(), rows).unwrap();
        }
        assert_eq!(t.page_count(), 1, "the two pages merged");
        // 2 x 100 k rows of 12 key bytes, 4 offset bytes and 8 value bytes: 4.8 MB let go,
        // so the allocator was trimmed and the count started again.
        assert_eq!(t.released, 0, "the merge's pages were counted and the count reset");
        assert!(t.released_at > 0, "the table's size at the trim is kept");
        t.let_go(RELEASE_BYTES - 1);
        assert_eq!(t.released, RELEASE_BYTES - 1, "under the threshold nothing happens");
        t.let_go(1);
        assert_eq!(t.released, 0, "at the threshold the allocator is trimmed and the count reset");
        // Growth: no trim until the table is RELEASE_BYTES past its size at the last one.
        let at = t.released_at;
        t.released_at = t.memory() - RELEASE_BYTES + 1;
        t.release_after_growth();
        assert_ne!(t.released_at, at, "(the test moved the mark)");
        assert_eq!(t.released_at, t.memory() - RELEASE_BYTES + 1, "grown by less than RELEASE_BYTES: no trim");
        t.released_at = t.memory() - RELEASE_BYTES;
        t.release_after_growth();
        assert_eq!(t.released_at, t.memory(), "grown by RELEASE_BYTES: trimmed, mark moved to the size now");
    }
}
