package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
)

// syncBuffer is a log sink that tests read while the daemon writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeConfig(t *testing.T, path string, v any) {
	t.Helper()
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.MarshalIndent(v, "", "  "); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// badConfig has three problems, all of which must be reported.
const badConfig = `{
  "interfaces": [{"name": "eth0", "zone": "inside"}],
  "zones": [{"name": "inside"}],
  "policies": [{"from_zone": "inside", "to_zone": "nowhere", "protocol": "udp",
                "destination_ports": ["9000-8000"], "action": "maybe"}]
}`

// TestStartRefusesBadConfig needs no privileges: the config is refused
// before anything touches the kernel, with every problem printed.
func TestStartRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fw.json")
	writeConfig(t, cfg, badConfig)
	var stderr syncBuffer
	err := run(context.Background(), []string{"--config", cfg, "--socket", filepath.Join(dir, "fwd.sock"), "--metrics", ""},
		&env{stderr: &stderr})
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("run = %v, want a *dataplane.ConfigError", err)
	}
	if len(ce.Problems) != 3 {
		t.Errorf("%d problems, want 3: %v", len(ce.Problems), ce.Problems)
	}
	out := stderr.String()
	for _, p := range ce.Problems {
		if !strings.Contains(out, p.String()) {
			t.Errorf("stderr lacks problem %q:\n%s", p, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "fwd.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket created for a refused config: %v", err)
	}
}

func TestFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "--config is required"},
		{[]string{"--config", "x", "--backend", "fpga"}, `backend preference "fpga"`},
		{[]string{"--config", "x", "extra"}, "unexpected arguments: extra"},
		{[]string{"--config", filepath.Join(t.TempDir(), "missing.json")}, "read config"},
		{[]string{"--config", "x", "--pin=false", "--keep-dataplane"}, "--keep-dataplane needs a pinned dataplane"},
		{[]string{"--config", "x", "--name", "a/b"}, `--name: dataplane name "a/b"`},
		{[]string{"--remove", "x", "--pin-dir", filepath.Join(t.TempDir(), "none")}, "no pinned dataplane in"},
	}
	for _, tt := range tests {
		var stderr syncBuffer
		err := run(context.Background(), tt.args, &env{stderr: &stderr})
		if err == nil || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("run(%q) = %v, stderr %q; want an error mentioning %q", tt.args, err, stderr.String(), tt.want)
		}
	}
}
