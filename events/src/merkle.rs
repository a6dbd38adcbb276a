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
//! It keeps every complete subtree's hash: 64 bytes per entry in memory.

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

/// The tree, grown one leaf at a time.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[h][i]`: the hash of the complete subtree of leaves `i·2^h .. (i+1)·2^h`.
    levels: Vec<Vec<Hash>>,
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
        self.root_at(self.size()).unwrap_or_else(empty_root)
    }

    /// The root the tree had at `size` leaves (`None` past its size).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(empty_root()),
            n if n <= self.size() => Some(self.subtree(0, n)),
            _ => None,
        }
    }

    /// The hash of leaves `start..end` (`start < end ≤ size`).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// The audit path of leaf `index` (0-based: sequence `index + 1`) in the tree of `size`
    /// leaves, nearest the leaf first (RFC 9162 §2.1.3.1). `None` when `index ≥ size` or the
    /// tree has not reached `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n == 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// The proof that the tree of `from` leaves is a prefix of the tree of `to` leaves
    /// (RFC 9162 §2.1.4.1); empty when `from` is 0 or equals `to`. `None` when `from > to`
    /// or the tree has not reached `to`.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Option<Vec<Hash>> {
        if from > to || to > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        if from > 0 && from < to {
            self.subproof(from, 0, to, true, &mut proof);
        }
        Some(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
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
}
