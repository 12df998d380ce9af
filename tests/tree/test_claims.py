"""Items a run writes in place: hidden while the node is open, kept with its parts when the
node is opened again, removed with the run, ordinary items once released."""

from __future__ import annotations

from cachetree import OpenMode
from cachetree.results import merge
from cachetree.tree.parts import (
    CLAIM_KIND,
    claim_items,
    claimed_items,
    list_parts,
    release_items,
    remove_claimed_items,
)


def test_claimed_items_are_hidden_until_the_commit_and_kept_on_resume(tree):
    node = tree.node("n", params=1).open()
    claim_items(node.location, ["out.txt"])
    node.save_text("out", "written in place")
    node.save_text("note", "the node's own")
    assert node.item_names() == ["note.txt"]
    node.abandon()

    node = tree.node("n", params=1).open()
    assert node.open_mode is OpenMode.RESUMED
    assert node.location.raw_child("out.txt").read_text() == "written in place"
    assert not node.location.raw_child("note.txt").exists()  # unclaimed: discarded
    assert node.item_names() == []
    node.commit()
    assert node.item_names() == ["out.txt"]
    assert set(node.manifest.items) == {"out.txt"}

    assert not tree.node("n", params=2).open().location.raw_child("out.txt").exists()


def test_discarding_removes_claimed_items_and_releasing_keeps_them(tree):
    node = tree.node("n").open()
    claim_items(node.location, ["a.txt"])
    claim_items(node.location, ["b.txt"])  # adds to the claim
    for name in "abc":
        node.save_text(name, name)
    assert claimed_items(node.location) == {"a.txt", "b.txt"}
    remove_claimed_items(node.location)
    assert node.item_names() == ["c.txt"]
    assert not node.location.raw_child("a.txt").exists()
    assert claimed_items(node.location) == frozenset()

    claim_items(node.location, ["d.txt"])
    node.save_text("d", "d")
    assert node.item_names() == ["c.txt"]
    release_items(node.location)
    assert node.item_names() == ["c.txt", "d.txt"]
    assert list_parts(node.location) == []
    node.abandon()


def test_clean_keeps_the_claimed_items_of_an_open_node(tree):
    node = tree.node("n").open()
    claim_items(node.location, ["out.txt"])
    node.save_text("out", "in place")
    node.save_text("half", "left behind")
    node.abandon()
    tree.clean(dry_run=False)
    assert node.location.raw_child("out.txt").exists()
    assert not node.location.raw_child("half.txt").exists()


def test_merge_does_not_carry_a_claim_over(tree):
    source = tree.node("source").open()
    source.save_text("out", "x")
    claim_items(source.location, ["out.txt"])
    source.commit()  # a run killed between its commit and its release leaves the claim
    assert [p.kind for p in list_parts(source.location)] == [CLAIM_KIND]
    with tree.node("target") as target:
        target.save_text("out", "the target's own")
    merge(target, source)
    assert list_parts(target.location) == []
    assert target.item_names() == ["out.txt"]
