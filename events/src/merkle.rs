//! A Merkle tree over the log's entries in the manner of RFC 6962 / RFC 9162 (certificate
//! transparency): the leaf for sequence `s` is `SHA-256(0x00 ‖ entry hash of s)`, an interior
//! node is `SHA-256(0x01 ‖ left ‖ right)`, the tree of `n` leaves splits at the largest power of
//! two below `n`, and the empty tree's root is `SHA-256("")`. So any tool that checks
//! transparency-log proofs checks gantry's.
//!
//! [`MerkleTree`] is built incrementally, one entry at a time, and answers the root at any
//! size it has reached, inclusion proofs (entry `i` is in the tree of size `n`) and consistency
//! proofs (the tree of size `m` is a prefix of the tree of size `n`). [`verify_inclusion`] and
//! [`verify_consistency`] check them with nothing but the hashes.
//!
//! [`MerkleTree`] keeps every complete subtree's hash (64 bytes per entry in memory); the
//! functions [`root`], [`inclusion_proof`] and [`consistency_proof`] work on any [`Nodes`], so
//! gantry's views keep only the upper levels on disk and read the lowest ones back from the
//! log. [`Frontier`] keeps only the right edge: enough for the root as entries arrive.

use sha2::{Digest, Sha256};

use crate::Hash;

/// The leaf hash of `data` (for gantry's log, `data` is an entry's 32-byte hash).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    Hash(hasher.finalize().into())
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left.0);
    hasher.update(right.0);
    Hash(hasher.finalize().into())
}

/// The root of the tree of no leaves.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// The largest power of two below `n` (`n` ≥ 2): where a tree of `n` leaves splits.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Where the hashes of complete subtrees come from when a root or a proof is computed: the
/// whole tree in memory ([`MerkleTree`]), or a store that keeps only the upper levels and reads
/// leaves back from the log (gantry's views).
pub trait Nodes {
    type Error;
    /// The hash of the complete subtree of leaves `index·2^level .. (index+1)·2^level`.
    /// Asked only for subtrees inside the tree the proof is about.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The hash of leaves `start..end` (`start < end`).
fn subtree<N: Nodes + ?Sized>(nodes: &N, start: u64, end: u64) -> Result<Hash, N::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return nodes.node(level, start >> level);
    }
    let k = split(n);
    Ok(node_hash(
        &subtree(nodes, start, start + k)?,
        &subtree(nodes, start + k, end)?,
    ))
}

/// The root of the tree of the first `size` leaves.
pub fn root<N: Nodes + ?Sized>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    match size {
        0 => Ok(empty_root()),
        n => subtree(nodes, 0, n),
    }
}

/// The audit path of leaf `index` (0-based: sequence `index + 1`) in the tree of `size`
/// leaves, nearest the leaf first (RFC 9162 §2.1.3.1). Empty when `index ≥ size`.
pub fn inclusion_proof<N: Nodes + ?Sized>(
    nodes: &N,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, N::Error> {
    let mut proof = Vec::new();
    if index < size {
        path(nodes, index, 0, size, &mut proof)?;
    }
    Ok(proof)
}

fn path<N: Nodes + ?Sized>(
    nodes: &N,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(nodes, m, start, start + k, out)?;
        out.push(subtree(nodes, start + k, end)?);
    } else {
        path(nodes, m - k, start + k, end, out)?;
        out.push(subtree(nodes, start, start + k)?);
    }
    Ok(())
}

/// The proof that the tree of `from` leaves is a prefix of the tree of `to` leaves
/// (RFC 9162 §2.1.4.1); empty when `from` is 0, `from ≥ to`.
pub fn consistency_proof<N: Nodes + ?Sized>(
    nodes: &N,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, N::Error> {
    let mut proof = Vec::new();
    if from > 0 && from < to {
        subproof(nodes, from, 0, to, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<N: Nodes + ?Sized>(
    nodes: &N,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree(nodes, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, start, start + k, whole, out)?;
        out.push(subtree(nodes, start + k, end)?);
    } else {
        subproof(nodes, m - k, start + k, end, false, out)?;
        out.push(subtree(nodes, start, start + k)?);
    }
    Ok(())
}

/// The root of a complete subtree given its leaves (`leaves.len()` a power of two), or of the
/// tree of those leaves in general.
pub fn root_of_leaves(leaves: &[Hash]) -> Hash {
    match root(&Leaves(leaves), leaves.len() as u64) {
        Ok(hash) => hash,
        Err(never) => match never {},
    }
}

/// Leaves in a slice, as [`Nodes`].
struct Leaves<'a>(&'a [Hash]);

impl Nodes for Leaves<'_> {
    type Error = std::convert::Infallible;

    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let width = 1usize << level;
        let start = index as usize * width;
        let leaves = &self.0[start..start + width];
        Ok(if width == 1 {
            leaves[0]
        } else {
            let half = width / 2;
            node_hash(
                &root_of_leaves(&leaves[..half]),
                &root_of_leaves(&leaves[half..]),
            )
        })
    }
}

/// The tree, grown one leaf at a time, every complete subtree kept.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[h][i]`: the hash of the complete subtree of leaves `i·2^h .. (i+1)·2^h`.
    levels: Vec<Vec<Hash>>,
}

/// A node asked of a [`MerkleTree`] past the leaves it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfTree;

impl Nodes for MerkleTree {
    type Error = OutOfTree;

    fn node(&self, level: u32, index: u64) -> Result<Hash, OutOfTree> {
        self.levels
            .get(level as usize)
            .and_then(|nodes| nodes.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(OutOfTree)
    }
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// Adds the next entry, by its entry hash.
    pub fn push(&mut self, entry_hash: &Hash) {
        self.push_leaf(leaf_hash(&entry_hash.0));
    }

    /// Adds the next leaf, by its leaf hash.
    pub fn push_leaf(&mut self, leaf: Hash) {
        let mut hash = leaf;
        for level in 0.. {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let nodes = &mut self.levels[level];
            nodes.push(hash);
            let n = nodes.len();
            if !n.is_multiple_of(2) {
                break;
            }
            hash = node_hash(&nodes[n - 2], &nodes[n - 1]);
        }
    }

    /// How many leaves it holds.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// The root now.
    pub fn root(&self) -> Hash {
        root(self, self.size()).unwrap_or_else(|OutOfTree| empty_root())
    }

    /// The root the tree had at `size` leaves (`None` past its size).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        root(self, size).ok()
    }

    /// The audit path of leaf `index` in the tree of `size` leaves (see [`inclusion_proof`]).
    /// `None` when `index ≥ size` or the tree has not reached `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        inclusion_proof(self, index, size).ok()
    }

    /// The proof that the tree of `from` leaves is a prefix of the tree of `to` leaves (see
    /// [`consistency_proof`]). `None` when `from > to` or the tree has not reached `to`.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Option<Vec<Hash>> {
        if from > to || to > self.size() {
            return None;
        }
        consistency_proof(self, from, to).ok()
    }
}

/// The tree's right edge over the log's first `size` entries (fewer when the log ends
/// sooner: see [`Frontier::size`]), read from `log` by their stored hashes.
pub async fn frontier_of(log: &dyn crate::EventLog, size: u64) -> Result<Frontier, crate::Error> {
    let mut tree = Frontier::new();
    while tree.size() < size {
        let next = tree.size() + 1;
        let entries = log.read(next, (size - next + 1).min(4096) as usize).await?;
        if entries.is_empty() {
            break;
        }
        for entry in &entries {
            let hash = entry.stored_hash().map_err(|e| crate::Error::Broken {
                seq: entry.seq,
                reason: e.to_string(),
            })?;
            tree.push(&hash);
        }
    }
    Ok(tree)
}

/// The right edge of the tree: the roots of its complete subtrees, largest first (at most
/// 64). Enough to compute the root as leaves are added, in constant memory; what the Auditor
/// keeps while it verifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of each complete subtree along the right edge, largest first.
    edge: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Adds the next entry, by its entry hash.
    pub fn push(&mut self, entry_hash: &Hash) {
        let mut hash = leaf_hash(&entry_hash.0);
        let mut level = 0;
        while let Some(&(last, left)) = self.edge.last() {
            if last != level {
                break;
            }
            self.edge.pop();
            hash = node_hash(&left, &hash);
            level += 1;
        }
        self.edge.push((level, hash));
        self.size += 1;
    }

    /// How many leaves it holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree of all its leaves.
    pub fn root(&self) -> Hash {
        let mut nodes = self.edge.iter().rev();
        let Some(&(_, mut hash)) = nodes.next() else {
            return empty_root();
        };
        for (_, left) in nodes {
            hash = node_hash(left, &hash);
        }
        hash
    }
}

/// Whether `proof` shows the leaf `leaf` at `index` in the tree of `size` leaves with root
/// `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Whether `proof` shows the tree of `from` leaves with root `from_root` to be a prefix of the
/// tree of `to` leaves with root `to_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    from: u64,
    to: u64,
    from_root: &Hash,
    to_root: &Hash,
    proof: &[Hash],
) -> bool {
    if from > to {
        return false;
    }
    if from == to {
        return proof.is_empty() && from_root == to_root;
    }
    if from == 0 {
        // Every tree extends the empty one.
        return proof.is_empty() && *from_root == empty_root();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*from_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (from - 1, to - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *from_root && sr == *to_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(hash: &Hash) -> String {
        hash.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The leaves of the certificate-transparency reference tree, and its published roots for
    /// sizes 0 to 8.
    const CT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_tree() -> MerkleTree {
        let mut tree = MerkleTree::new();
        for leaf in CT_LEAVES {
            tree.push_leaf(leaf_hash(&unhex(leaf)));
        }
        tree
    }

    /// The root computed the slow, obvious way, straight from the definition.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = (1..)
                    .map(|p| 1usize << p)
                    .take_while(|&p| p < n)
                    .last()
                    .unwrap_or(1);
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_match_the_transparency_log_reference_tree() {
        let tree = ct_tree();
        for (size, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(
                hex(&tree.root_at(size as u64).expect("root")),
                *want,
                "size {size}"
            );
        }
        assert_eq!(tree.root_at(9), None);
    }

    #[test]
    fn inclusion_proofs_match_the_reference_tree() {
        let tree = ct_tree();
        let proof = tree.inclusion_proof(0, 8).expect("proof");
        let want = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        assert_eq!(proof.iter().map(hex).collect::<Vec<_>>(), want);
    }

    #[test]
    fn every_proof_of_every_size_verifies_and_a_changed_one_does_not() {
        let leaves: Vec<Hash> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut tree = MerkleTree::new();
        for (n, leaf) in leaves.iter().enumerate() {
            tree.push_leaf(*leaf);
            assert_eq!(tree.root(), reference_root(&leaves[..=n]), "size {}", n + 1);
        }
        for size in 1..=leaves.len() as u64 {
            let root = tree.root_at(size).expect("root");
            for index in 0..size {
                let leaf = &leaves[index as usize];
                let proof = tree.inclusion_proof(index, size).expect("proof");
                assert!(
                    verify_inclusion(leaf, index, size, &proof, &root),
                    "{index} in {size}"
                );
                // Another leaf, another place, another root, a changed or shortened path:
                // each fails.
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(&other, index, size, &proof, &root));
                if size > 1 {
                    assert!(!verify_inclusion(
                        leaf,
                        (index + 1) % size,
                        size,
                        &proof,
                        &root
                    ));
                    let mut changed = proof.clone();
                    changed[0].0[0] ^= 1;
                    assert!(!verify_inclusion(leaf, index, size, &changed, &root));
                    assert!(!verify_inclusion(leaf, index, size, &proof[1..], &root));
                }
                assert!(!verify_inclusion(leaf, index, size, &proof, &other));
            }
            for from in 0..=size {
                let from_root = tree.root_at(from).expect("root");
                let proof = tree.consistency_proof(from, size).expect("proof");
                assert!(
                    verify_consistency(from, size, &from_root, &root, &proof),
                    "{from} → {size}"
                );
                if from > 0 && from < size {
                    // A rewritten past (another root at `from`) or a changed proof fails.
                    let forged = leaf_hash(b"another history");
                    assert!(!verify_consistency(from, size, &forged, &root, &proof));
                    assert!(!verify_consistency(from, size, &from_root, &forged, &proof));
                    let mut changed = proof.clone();
                    changed[0].0[31] ^= 1;
                    assert!(!verify_consistency(from, size, &from_root, &root, &changed));
                }
            }
        }
        assert_eq!(tree.inclusion_proof(5, 5), None);
        assert_eq!(tree.consistency_proof(3, 200), None);
    }

    /// Keeps only levels ≥ 3 and computes lower ones from chunks of 8 leaves, as the views do.
    struct Floored {
        upper: MerkleTree,
        leaves: Vec<Hash>,
    }

    impl Nodes for Floored {
        type Error = u64;

        fn node(&self, level: u32, index: u64) -> Result<Hash, u64> {
            if level >= 3 {
                return Ok(self.upper.node(level, index).expect("infallible"));
            }
            let start = (index << level) as usize;
            // A chunk not handed over: the caller must fetch it (here: chunk 2 is never
            // handed over, to check that the error names it).
            if start / 8 == 2 {
                return Err(2);
            }
            Ok(root_of_leaves(&self.leaves[start..start + (1 << level)]))
        }
    }

    #[test]
    fn the_free_functions_on_a_tree_too_small_refuse_instead_of_panicking() {
        let mut tree = MerkleTree::new();
        for i in 0..5u8 {
            tree.push(&Hash::of(&[i]));
        }
        assert_eq!(root(&tree, 9), Err(OutOfTree));
        assert_eq!(inclusion_proof(&tree, 2, 9), Err(OutOfTree));
        assert_eq!(consistency_proof(&tree, 3, 9), Err(OutOfTree));
        assert_eq!(tree.root_at(6), None);
    }

    #[test]
    fn the_frontier_and_a_floored_store_agree_with_the_whole_tree() {
        let leaves: Vec<Hash> = (0..150u32).map(|i| Hash::of(&i.to_le_bytes())).collect();
        let mut tree = MerkleTree::new();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for leaf in &leaves {
            tree.push(leaf);
            frontier.push(leaf);
            assert_eq!(frontier.root(), tree.root(), "size {}", tree.size());
            assert_eq!(frontier.size(), tree.size());
        }
        let floored = Floored {
            upper: tree.clone(),
            leaves: leaves.iter().map(|l| leaf_hash(&l.0)).collect(),
        };
        for size in [1u64, 7, 8, 9, 33, 64, 100, 150] {
            for index in (0..size).filter(|i| i / 8 != 2) {
                match inclusion_proof(&floored, index, size) {
                    Ok(proof) => assert_eq!(Some(proof), tree.inclusion_proof(index, size)),
                    // Leaf 16..24 are needed only when the proof passes through them.
                    Err(chunk) => assert_eq!(chunk, 2),
                }
            }
            for from in 0..=size {
                match consistency_proof(&floored, from, size) {
                    Ok(proof) => assert_eq!(Some(proof), tree.consistency_proof(from, size)),
                    Err(chunk) => assert_eq!(chunk, 2),
                }
            }
        }
        // Entry 100 in the tree of 150: the proof needs no leaves but its own chunk's and the
        // last (partial) chunk's.
        assert_eq!(
            inclusion_proof(&floored, 100, 150).ok(),
            tree.inclusion_proof(100, 150)
        );
        assert_eq!(root(&floored, 20), Err(2));
    }
}
