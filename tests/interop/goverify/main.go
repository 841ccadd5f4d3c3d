// goverify checks a Layer-7 ledger export pack (docs/ledger-format.md) with public
// libraries only: golang.org/x/mod/sumdb/note for the signed checkpoint notes,
// transparency-dev/formats for C2SP checkpoints and cosignature/v1, and
// transparency-dev/merkle for RFC 6962 inclusion and consistency proofs. It shares
// no code with the Python ledger, so the spec cannot drift from the implementation.
//
//	goverify -log-key VKEY [-witness-key VKEY]... PACK.json
//
// Exit 0 and "OK ..." when everything verifies; exit 1 and "FAIL: ..." otherwise.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

type event struct {
	GlobalSeq      uint64   `json:"global_seq"`
	Sequence       uint64   `json:"sequence"`
	PrevHash       string   `json:"prev_hash"`
	Hash           string   `json:"hash"`
	Body           string   `json:"body"`
	InclusionProof []string `json:"inclusion_proof"`
}

// The pack is JSON lines: this header, one event per line, then the trailer.
type header struct {
	Format            string     `json:"format"`
	Version           int        `json:"version"`
	Origin            string     `json:"origin"`
	Checkpoints       []string   `json:"checkpoints"`
	ConsistencyProofs [][]string `json:"consistency_proofs"`
}

type trailer struct {
	Verification *struct {
		Result             string   `json:"result"`
		Events             uint64   `json:"events"`
		Streams            uint64   `json:"streams"`
		TreeSize           uint64   `json:"tree_size"`
		StreamsFromGenesis []string `json:"streams_from_genesis"`
		Checkpoints        uint64   `json:"checkpoints"`
		FirstCheckpoint    uint64   `json:"first_checkpoint"`
	} `json:"verification"`
}

func strict(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value on the line")
	}
	return nil
}

type checkpoint struct {
	cp        *log.Checkpoint
	index     uint64
	hasPrev   bool
	prevIndex uint64
	prevSize  uint64
	prevRoot  []byte
	cosigned  map[string]bool
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

const genesis = "0000000000000000000000000000000000000000000000000000000000000000"

func hashes(where string, hexes []string) ([][]byte, error) {
	out := make([][]byte, 0, len(hexes))
	for i, h := range hexes {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 || hex.EncodeToString(b) != h {
			return nil, fmt.Errorf("%s[%d] is not 64 lower-case hex digits", where, i)
		}
		out = append(out, b)
	}
	return out, nil
}

// parseExtensions reads the l7.index / l7.prev / l7.time extension lines.
func parseExtensions(rest []byte, c *checkpoint) error {
	lines := strings.Split(strings.TrimSuffix(string(rest), "\n"), "\n")
	if len(lines) < 2 || len(lines) > 3 {
		return fmt.Errorf("expected 2 or 3 extension lines, got %d", len(lines))
	}
	f := strings.Split(lines[0], " ")
	if len(f) != 2 || f[0] != "l7.index" {
		return fmt.Errorf("first extension line is not l7.index: %q", lines[0])
	}
	idx, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return err
	}
	c.index = idx
	if len(lines) == 3 {
		p := strings.Split(lines[1], " ")
		if len(p) != 4 || p[0] != "l7.prev" {
			return fmt.Errorf("second extension line is not l7.prev: %q", lines[1])
		}
		if c.prevIndex, err = strconv.ParseUint(p[1], 10, 64); err != nil {
			return err
		}
		if c.prevSize, err = strconv.ParseUint(p[2], 10, 64); err != nil {
			return err
		}
		var r log.Checkpoint
		if _, err := r.Unmarshal([]byte(fmt.Sprintf("x\n0\n%s\n", p[3]))); err != nil || len(r.Hash) != 32 {
			return fmt.Errorf("l7.prev root is not a base64 hash: %q", p[3])
		}
		c.prevRoot = r.Hash
		c.hasPrev = true
	}
	if !strings.HasPrefix(lines[len(lines)-1], "l7.time ") {
		return fmt.Errorf("last extension line is not l7.time: %q", lines[len(lines)-1])
	}
	return nil
}

func run(path string, logKey string, witnessKeys []string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	lines.Buffer(make([]byte, 0, 1<<20), 64<<20)
	if !lines.Scan() {
		return "", errors.New("empty pack")
	}
	var p header
	if err := strict(lines.Bytes(), &p); err != nil {
		return "", fmt.Errorf("line 1 is not the expected header: %w", err)
	}
	if p.Format != "l7.ledger.export" || p.Version != 3 {
		return "", fmt.Errorf("not an l7.ledger.export version 3 pack")
	}
	logV, err := note.NewVerifier(logKey)
	if err != nil {
		return "", fmt.Errorf("log key: %w", err)
	}
	var wVs []note.Verifier
	for _, k := range witnessKeys {
		v, err := fnote.NewVerifierForCosignatureV1(k)
		if err != nil {
			return "", fmt.Errorf("witness key %q: %w", k, err)
		}
		wVs = append(wVs, v)
	}
	if len(p.Checkpoints) == 0 || len(p.ConsistencyProofs) != len(p.Checkpoints)-1 {
		return "", errors.New("need >= 1 checkpoint and one consistency proof per consecutive pair")
	}
	// 1. Checkpoint notes: the log's signature (sumdb/note), C2SP body, cosignatures.
	chain := make([]checkpoint, 0, len(p.Checkpoints))
	for i, n := range p.Checkpoints {
		cp, rest, opened, err := log.ParseCheckpoint([]byte(n), p.Origin, logV, wVs...)
		if err != nil {
			return "", fmt.Errorf("checkpoints[%d]: %w", i, err)
		}
		c := checkpoint{cp: cp, cosigned: map[string]bool{}}
		if err := parseExtensions(rest, &c); err != nil {
			return "", fmt.Errorf("checkpoints[%d]: %w", i, err)
		}
		for _, s := range opened.Sigs {
			if s.Name != logV.Name() || s.Hash != logV.KeyHash() {
				c.cosigned[fmt.Sprintf("%s+%08x", s.Name, s.Hash)] = true
			}
		}
		chain = append(chain, c)
	}
	// 2. The chain: consecutive indexes, each naming its predecessor; consistency proofs.
	for i := 1; i < len(chain); i++ {
		a, b := chain[i-1], chain[i]
		if b.index != a.index+1 || !b.hasPrev || b.prevIndex != a.index ||
			b.prevSize != a.cp.Size || !bytes.Equal(b.prevRoot, a.cp.Hash) {
			return "", fmt.Errorf("checkpoint %d does not name checkpoint %d as its predecessor", b.index, a.index)
		}
		nodes, err := hashes(fmt.Sprintf("consistency_proofs[%d]", i-1), p.ConsistencyProofs[i-1])
		if err != nil {
			return "", err
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, a.cp.Size, b.cp.Size, nodes, a.cp.Hash, b.cp.Hash); err != nil {
			return "", fmt.Errorf("consistency %d -> %d: %w", a.index, b.index, err)
		}
	}
	if chain[0].index == 0 && chain[0].hasPrev {
		return "", errors.New("checkpoint 0 names a predecessor")
	}
	anchor := chain[len(chain)-1]
	// 3. Every given witness cosigned the anchor.
	for _, v := range wVs {
		id := fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash())
		if !anchor.cosigned[id] {
			return "", fmt.Errorf("the anchor checkpoint %d is not cosigned by witness %s", anchor.index, id)
		}
	}
	// 4. Events: chain hash, stream links, inclusion in the anchor.
	heads := map[string][2]string{}
	var last uint64
	var n uint64
	done := false
	for i := 0; lines.Scan(); i++ {
		line := lines.Bytes()
		if done {
			return "", errors.New("the pack goes on after its verification block")
		}
		if bytes.HasPrefix(line, []byte(`{"verification":`)) {
			var t trailer
			if err := strict(line, &t); err != nil || t.Verification == nil {
				return "", fmt.Errorf("trailer is not a verification block: %v", err)
			}
			v := t.Verification
			if v.Result != "verified" || v.Events != n || n == 0 || v.Streams != uint64(len(heads)) ||
				v.TreeSize != anchor.cp.Size || v.Checkpoints != uint64(len(chain)) || v.FirstCheckpoint != chain[0].index {
				return "", fmt.Errorf("the verification block does not match the pack (%d events, %d streams)", n, len(heads))
			}
			done = true
			continue
		}
		var e event
		if err := strict(line, &e); err != nil {
			return "", fmt.Errorf("events[%d] is not an event line: %w", i, err)
		}
		n++
		if e.GlobalSeq <= last || e.GlobalSeq > anchor.cp.Size {
			return "", fmt.Errorf("events[%d]: global_seq %d out of order or beyond the anchor", i, e.GlobalSeq)
		}
		last = e.GlobalSeq
		sum := sha256.Sum256(append([]byte(e.PrevHash), []byte(e.Body)...))
		if hex.EncodeToString(sum[:]) != e.Hash {
			return "", fmt.Errorf("events[%d] (global_seq %d): sha256(prev_hash || body) != hash", i, e.GlobalSeq)
		}
		var body struct {
			DecisionID string `json:"decision_id"`
		}
		if err := json.Unmarshal([]byte(e.Body), &body); err != nil || body.DecisionID == "" {
			return "", fmt.Errorf("events[%d]: body is not an event object", i)
		}
		if h, ok := heads[body.DecisionID]; ok {
			if h[1] != e.PrevHash || h[0] != strconv.FormatUint(e.Sequence-1, 10) {
				return "", fmt.Errorf("events[%d]: stream %s does not link", i, body.DecisionID)
			}
		} else if (e.Sequence == 1) != (e.PrevHash == genesis) {
			return "", fmt.Errorf("events[%d]: stream %s starts wrongly", i, body.DecisionID)
		}
		heads[body.DecisionID] = [2]string{strconv.FormatUint(e.Sequence, 10), e.Hash}
		leaf, err := hex.DecodeString(e.Hash)
		if err != nil || len(leaf) != 32 {
			return "", fmt.Errorf("events[%d]: hash is not hex", i)
		}
		nodes, err := hashes(fmt.Sprintf("events[%d].inclusion_proof", i), e.InclusionProof)
		if err != nil {
			return "", err
		}
		leafHash := rfc6962.DefaultHasher.HashLeaf(leaf)
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, e.GlobalSeq-1, anchor.cp.Size, leafHash, nodes, anchor.cp.Hash); err != nil {
			return "", fmt.Errorf("events[%d] (global_seq %d): inclusion: %w", i, e.GlobalSeq, err)
		}
	}
	if err := lines.Err(); err != nil {
		return "", err
	}
	if !done {
		return "", errors.New("the pack has no verification block (truncated?)")
	}
	return fmt.Sprintf("OK: %d events, %d streams, checkpoints %d..%d (anchor tree_size %d), %d witness(es) cosigned",
		n, len(heads), chain[0].index, anchor.index, anchor.cp.Size, len(wVs)), nil
}

func main() {
	var witnesses multiFlag
	logKey := flag.String("log-key", "", "the log's note verifier key (vkey)")
	flag.Var(&witnesses, "witness-key", "a witness's cosignature/v1 verifier key (repeatable)")
	flag.Parse()
	if *logKey == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: goverify -log-key VKEY [-witness-key VKEY]... PACK.json")
		os.Exit(2)
	}
	msg, err := run(flag.Arg(0), *logKey, witnesses)
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	fmt.Println(msg)
}
