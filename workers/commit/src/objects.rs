//! Where the workdir's git objects live: new ones in memory until the push,
//! then one pack per push, and a bounded number of packs.
//!
//! An operation's commit is seven objects (the file, five trees down
//! `repos/<owner>/<repo>/<dir>/`, the commit). Written as loose objects,
//! each is a new file, and creating files was half of commit-to-git's CPU
//! on a busy ext4 filesystem (the kernel searching for a free inode); they
//! also pile up for ever. So:
//!
//! - [`keep_new_objects_in_memory`]: new objects go to an in-memory store
//!   (libgit2's mempack) ahead of the repository's own;
//! - [`write_pack`]: before a push, everything the branch gained since it
//!   was last on disk becomes one pack file (the ref moves only after it);
//! - [`merge_packs`]: when there are more than [`MAX_PACKS`] packs, the
//!   smaller ones are merged geometrically, on a thread of their own, so
//!   lookups never walk hundreds of indexes and each object is rewritten
//!   only a few times in its life; packs past [`SETTLED_OBJECTS`] are not
//!   merged again, so that a merge's memory stays bounded.
//!
//! A process killed between two pushes loses only commits that were never
//! pushed: their messages were not acknowledged, and are applied again.

use std::io::Write;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

/// Above the repository's own object stores (libgit2 gives its loose store
/// priority 1 and its packs 2; the highest takes the writes).
const MEMORY_PRIORITY: i32 = 1000;
/// Packs kept at most; past it the smaller ones are merged.
pub const MAX_PACKS: usize = 16;

/// Puts an in-memory store in front of `repo`'s objects: every object
/// written from now on stays in memory, readable like any other, until the
/// repository is dropped. Objects already on disk are read as before.
pub fn keep_new_objects_in_memory(repo: &Repository) -> Result<(), git2::Error> {
    let odb = repo.odb()?;
    // The store belongs to the object database from here on, which frees it
    // with the repository; its handle is not needed again.
    odb.add_new_mempack_backend(MEMORY_PRIORITY)?;
    Ok(())
}

/// Writes one pack holding every object reachable from `tip` and not from
/// `known` (commits whose objects are already on disk).
pub fn write_pack(repo: &Repository, tip: Oid, known: &[Oid]) -> Result<(), git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    for commit in known {
        walk.hide(*commit)?;
    }
    let mut builder = repo.packbuilder()?;
    builder.set_threads(1);
    builder.insert_walk(&mut walk)?;
    store_pack(repo, &mut builder)
}

/// The pack `builder` holds, indexed and stored among `repo`'s packs. The
/// pack goes to the indexer piece by piece as it is built: held whole in
/// memory, a merge of the whole history would need as much memory as the
/// history takes on disk.
fn store_pack(repo: &Repository, builder: &mut git2::PackBuilder<'_>) -> Result<(), git2::Error> {
    if builder.object_count() == 0 {
        return Ok(());
    }
    let odb = repo.odb()?;
    let mut writer = odb.packwriter()?;
    let mut failed = None;
    let built = builder.foreach(|piece| match writer.write_all(piece) {
        Ok(()) => true,
        Err(err) => {
            failed = Some(err);
            false
        }
    });
    if let Some(err) = failed {
        return Err(git2::Error::from_str(&format!("writing a pack: {err}")));
    }
    built?;
    writer.commit()?;
    Ok(())
}

/// Removes from `objects/pack` of the repository at `path` the temporary
/// files libgit2 writes a pack into (`pack_git2_*`) before it names it:
/// left there only by a process killed while writing or merging a pack.
/// Call only while no other process uses the repository.
pub fn remove_unfinished_packs(path: &Path) -> std::io::Result<usize> {
    let dir = path.join("objects").join("pack");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("pack_git2_") && entry.file_type()?.is_file() {
            tracing::warn!(path = %entry.path().display(), "removing a pack a killed process left unfinished");
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One pack in `objects/pack`.
#[derive(Debug)]
struct Pack {
    index: PathBuf,
    objects: u32,
}

/// Packs whose objects are all in a newer, merged pack: to be removed by
/// [`Merged::remove`] while no repository handle of this process may be
/// reading them.
#[derive(Debug)]
pub struct Merged {
    indexes: Vec<PathBuf>,
}

impl Merged {
    pub fn count(&self) -> usize {
        self.indexes.len()
    }

    /// Removes the merged packs' files.
    pub fn remove(self) -> std::io::Result<()> {
        for index in self.indexes {
            for extension in ["pack", "idx", "rev", "bitmap", "mtimes"] {
                match std::fs::remove_file(index.with_extension(extension)) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

/// Packs holding more objects than this are never merged again, as if
/// marked `.keep`. A merge holds an entry per object it takes in (about
/// 660 bytes each at its peak, measured on 56,000 objects), so merging a
/// long history whole would need memory in proportion to it; with this
/// bound a merge takes in at most some [`MAX_PACKS`] packs below it. A
/// history of ten million objects leaves about fifty settled packs.
pub const SETTLED_OBJECTS: u32 = 200_000;

/// Whether the repository at `path` has more than [`MAX_PACKS`] packs that
/// may still be merged.
pub fn too_many_packs(path: &Path) -> bool {
    mergeable(&path.join("objects").join("pack"), SETTLED_OBJECTS).is_ok_and(|packs| packs.len() > MAX_PACKS)
}

/// The packs in `dir` that may still be merged: neither kept nor holding
/// more than `settled` objects.
fn mergeable(dir: &Path, settled: u32) -> std::io::Result<Vec<Pack>> {
    Ok(packs_in(dir)?.into_iter().filter(|pack| pack.objects <= settled).collect())
}

/// Merges packs of the bare repository at `path`, geometrically (as
/// `git repack --geometric=2` does): sorted by size, the packs above the
/// merged ones each hold at least twice what the next smaller one does, and
/// the merged pack less than half the next one, so each object is rewritten
/// about log2(history / push) times in its life. Packs marked `.keep` and
/// packs of more than [`SETTLED_OBJECTS`] objects are left alone. The
/// merged pack is stored; the packs it replaces are returned, not removed.
/// Uses a handle of its own, so that it can run beside the workdir (a merge
/// of 14,000 objects took over a second).
pub fn merge_packs(path: &Path) -> Result<Option<Merged>, git2::Error> {
    merge_packs_up_to(path, SETTLED_OBJECTS)
}

/// [`merge_packs`], leaving packs of more than `settled` objects alone.
fn merge_packs_up_to(path: &Path, settled: u32) -> Result<Option<Merged>, git2::Error> {
    let repo = Repository::open_bare(path)?;
    let dir = repo.path().join("objects").join("pack");
    let mut packs = mergeable(&dir, settled).map_err(|err| io_error("listing packs", err))?;
    if packs.len() <= MAX_PACKS {
        return Ok(None);
    }
    packs.sort_by_key(|pack| pack.objects);
    let split = geometric_split(&packs.iter().map(|p| u64::from(p.objects)).collect::<Vec<_>>());
    let mut builder = repo.packbuilder()?;
    builder.set_threads(1);
    for pack in &packs[..split] {
        for id in index_ids(&pack.index).map_err(|err| io_error("reading a pack index", err))? {
            builder.insert_object(id, None)?;
        }
    }
    let before = index_files(&dir).map_err(|err| io_error("listing packs", err))?;
    store_pack(&repo, &mut builder)?;
    // A pack is named after its contents: when the merged pack came out
    // byte for byte like one it merged (duplicates), its file is one of
    // theirs, and removing them would remove it too.
    let after = index_files(&dir).map_err(|err| io_error("listing packs", err))?;
    if after.is_subset(&before) {
        return Ok(None);
    }
    Ok(Some(Merged { indexes: packs.into_iter().take(split).map(|pack| pack.index).collect() }))
}

/// Has glibc's malloc, which libgit2 allocates through, keep one arena for
/// the whole process, unless the operator set `MALLOC_ARENA_MAX`. By
/// default each thread that allocates gets an arena of its own (up to
/// eight per core) and each keeps the peak it reached: handlers on
/// blocking threads and merges on threads of their own made the process
/// grow with every larger merge, to 190 MiB resident over 8,000 commits
/// with under 50 MiB in use; with one arena it peaked at 71 MiB, at the
/// same commits/s. Call first thing in `main`.
pub fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it takes no
    // pointer and may be called at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Every pack index in `dir`.
fn index_files(dir: &Path) -> std::io::Result<std::collections::HashSet<PathBuf>> {
    let mut found = std::collections::HashSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "idx") {
            found.insert(path);
        }
    }
    Ok(found)
}

/// How many of `sizes` (ascending) to merge: everything up to the highest
/// place where a pack is less than twice the one below it, then upward for
/// as long as the next pack is less than twice the merged total. At least
/// two.
fn geometric_split(sizes: &[u64]) -> usize {
    let mut split = (1..sizes.len()).rev().find(|&i| sizes[i] < 2 * sizes[i - 1]).map_or(0, |i| i + 1).max(2);
    let mut total: u64 = sizes[..split.min(sizes.len())].iter().sum();
    while split < sizes.len() && sizes[split] < 2 * total {
        total += sizes[split];
        split += 1;
    }
    split.min(sizes.len())
}

fn io_error(what: &str, err: std::io::Error) -> git2::Error {
    git2::Error::from_str(&format!("{what}: {err}"))
}

/// The packs in `dir` (an `objects/pack` directory) that may be merged.
fn packs_in(dir: &Path) -> std::io::Result<Vec<Pack>> {
    let mut packs = Vec::new();
    let indexes = match index_files(dir) {
        Ok(indexes) => indexes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(packs),
        Err(err) => return Err(err),
    };
    for index in indexes {
        if index.with_extension("keep").exists() || !index.with_extension("pack").exists() {
            continue;
        }
        // One unreadable index must not stop every later merge: its pack is
        // left where it is.
        match index_ids_count(&index) {
            Ok(objects) => packs.push(Pack { index, objects }),
            Err(err) => tracing::warn!(index = %index.display(), error = %err, "a pack index that cannot be read"),
        }
    }
    Ok(packs)
}

/// The header of a version-2 pack index: magic, version, then 256 fan-out
/// counts (the last is the number of objects), then the object ids.
const INDEX_MAGIC: [u8; 4] = [0xff, b't', b'O', b'c'];
const FANOUT_END: usize = 8 + 256 * 4;

/// The object count in a version-2 index's header (`bytes` holds at least
/// its first [`FANOUT_END`] bytes).
fn index_count(path: &Path, bytes: &[u8]) -> std::io::Result<u32> {
    if bytes.len() < FANOUT_END || bytes[..4] != INDEX_MAGIC || bytes[4..8] != [0, 0, 0, 2] {
        return Err(invalid_index(path, "not a version-2 pack index"));
    }
    let mut count = [0u8; 4];
    count.copy_from_slice(&bytes[FANOUT_END - 4..FANOUT_END]);
    Ok(u32::from_be_bytes(count))
}

fn invalid_index(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}

/// The number of objects in the pack `path` indexes, from the index's
/// header alone (a merge reads the whole index; counting must stay cheap
/// however large the packs grow).
fn index_ids_count(path: &Path) -> std::io::Result<u32> {
    use std::io::Read;
    let mut header = [0u8; FANOUT_END];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    index_count(path, &header)
}

/// The ids of the objects in the pack `path` indexes.
fn index_ids(path: &Path) -> std::io::Result<Vec<Oid>> {
    let bytes = std::fs::read(path)?;
    let objects = index_count(path, &bytes)? as usize;
    if bytes.len() < FANOUT_END + objects * 20 {
        return Err(invalid_index(path, "shorter than its object count"));
    }
    bytes[FANOUT_END..FANOUT_END + objects * 20]
        .chunks_exact(20)
        .map(|id| Oid::from_bytes(id).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_file(repo: &Repository, parent: Option<Oid>, n: usize) -> Oid {
        let blob = repo.blob(format!("content {n}\n").as_bytes()).expect("blob");
        let base = match parent {
            Some(p) => repo.find_commit(p).and_then(|c| c.tree()).expect("tree"),
            None => repo.find_tree(repo.treebuilder(None).and_then(|b| b.write()).expect("empty")).expect("tree"),
        };
        let mut update = git2::build::TreeUpdateBuilder::new();
        update.upsert(format!("repos/o/r/issues/{}.json", n % 7), blob, git2::FileMode::Blob);
        let tree = repo.find_tree(update.create_updated(repo, &base).expect("update")).expect("tree");
        let who = git2::Signature::now("t", "t@example.com").expect("signature");
        let parents: Vec<git2::Commit> = parent.map(|p| repo.find_commit(p).expect("parent")).into_iter().collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(None, &who, &who, &format!("c{n}"), &tree, &parents).expect("commit")
    }

    fn loose_objects(repo: &Repository) -> usize {
        std::fs::read_dir(repo.path().join("objects"))
            .expect("objects")
            .flatten()
            .filter(|e| e.file_name().len() == 2)
            .map(|e| std::fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(0))
            .sum()
    }

    #[test]
    fn commits_stay_in_memory_until_packed_and_packs_stay_few() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.git");
        Repository::init_bare(&path).expect("repo");
        let mut tip = None;
        let mut on_disk: Option<Oid> = None;
        for round in 0..40 {
            // A repository handle per round, as the workdir reopens after
            // each push: what was only in memory is gone unless packed.
            let repo = Repository::open_bare(&path).expect("repo");
            keep_new_objects_in_memory(&repo).expect("memory");
            for n in 0..5 {
                tip = Some(commit_file(&repo, tip, round * 5 + n));
            }
            assert_eq!(loose_objects(&repo), 0, "round {round}: new objects were written as files");
            let tip_now = tip.expect("tip");
            write_pack(&repo, tip_now, &on_disk.into_iter().collect::<Vec<_>>()).expect("pack");
            on_disk = Some(tip_now);
            drop(repo);
            if let Some(merged) = merge_packs(&path).expect("merge") {
                merged.remove().expect("remove merged packs");
            }
            let repo = Repository::open_bare(&path).expect("repo");
            let packs = packs_in(&repo.path().join("objects/pack")).expect("packs");
            assert!(packs.len() <= MAX_PACKS, "round {round}: {} packs", packs.len());
        }
        // A fresh handle, nothing in memory: every commit and its trees and
        // files read back from the packs.
        let repo = Repository::open_bare(&path).expect("reopen");
        let mut walk = repo.revwalk().expect("walk");
        walk.push(tip.expect("tip")).expect("push");
        let mut commits = 0;
        for oid in walk {
            let commit = repo.find_commit(oid.expect("oid")).expect("commit on disk");
            commit
                .tree()
                .expect("tree")
                .walk(git2::TreeWalkMode::PreOrder, |_, entry| {
                    assert!(entry.to_object(&repo).is_ok(), "{:?} missing", entry.name());
                    git2::TreeWalkResult::Ok
                })
                .expect("walk tree");
            commits += 1;
        }
        assert_eq!(commits, 200);
        assert_eq!(loose_objects(&repo), 0);
    }

    #[test]
    fn a_settled_pack_is_never_merged_again() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.git");
        Repository::init_bare(&path).expect("repo");
        let packs_dir = path.join("objects/pack");
        // One pack of 15 commits (some 100 objects), then 20 of one commit.
        let repo = Repository::open_bare(&path).expect("repo");
        keep_new_objects_in_memory(&repo).expect("memory");
        let mut tip = None;
        for n in 0..15 {
            tip = Some(commit_file(&repo, tip, n));
        }
        write_pack(&repo, tip.expect("tip"), &[]).expect("pack");
        let big = packs_in(&packs_dir).expect("packs").remove(0);
        for n in 15..35 {
            let known: Vec<Oid> = tip.into_iter().collect();
            tip = Some(commit_file(&repo, tip, n));
            write_pack(&repo, tip.expect("tip"), &known).expect("pack");
        }
        drop(repo);
        let settled = big.objects - 1;
        assert_eq!(mergeable(&packs_dir, settled).expect("packs").len(), 20, "all but the big one");
        // The 20 small ones hold more than half the big one: unsettled, it
        // would be merged with them.
        let mut all: Vec<u64> = packs_in(&packs_dir).expect("packs").iter().map(|p| u64::from(p.objects)).collect();
        all.sort_unstable();
        assert_eq!(geometric_split(&all), 21, "{all:?}");

        merge_packs_up_to(&path, settled).expect("merge").expect("merged").remove().expect("remove");
        let left = packs_in(&packs_dir).expect("packs");
        assert_eq!(left.len(), 2, "the settled pack and the merged one");
        assert!(left.iter().any(|pack| pack.index == big.index), "the settled pack was left alone");
        assert!(mergeable(&packs_dir, settled).expect("packs").len() <= MAX_PACKS);
    }

    #[test]
    fn what_was_never_packed_is_gone_with_the_handle() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.git");
        let unpacked = {
            let repo = Repository::init_bare(&path).expect("repo");
            keep_new_objects_in_memory(&repo).expect("memory");
            let c = commit_file(&repo, None, 1);
            assert!(repo.find_commit(c).is_ok(), "readable while the handle lives");
            c
        };
        let repo = Repository::open_bare(&path).expect("reopen");
        assert!(repo.find_commit(unpacked).is_err());
    }

    #[test]
    fn merging_is_geometric() {
        // Many small packs on top of a big one: the small ones merge, the
        // big one stays.
        assert_eq!(geometric_split(&[10, 10, 10, 10, 10000]), 4);
        // The merged total reaches the next pack's half: it joins.
        assert_eq!(geometric_split(&[10, 10, 10, 10, 60, 10000]), 5);
        // Already a progression: only the two smallest.
        assert_eq!(geometric_split(&[1, 2, 4, 8, 16]), 5);
        assert_eq!(geometric_split(&[1, 4, 16, 64]), 2);
        assert_eq!(geometric_split(&[5, 5]), 2);
    }

    #[test]
    fn a_damaged_index_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("dir");
        let short = dir.path().join("short.idx");
        std::fs::write(&short, b"\xfftOc\0\0\0\x02").expect("write");
        assert!(index_ids(&short).is_err());
        let mut lying = vec![0xff, b't', b'O', b'c', 0, 0, 0, 2];
        lying.extend(std::iter::repeat_n(0u8, 255 * 4));
        lying.extend(1000u32.to_be_bytes());
        let lying_path = dir.path().join("lying.idx");
        std::fs::write(&lying_path, &lying).expect("write");
        assert!(index_ids(&lying_path).is_err());
    }
}
