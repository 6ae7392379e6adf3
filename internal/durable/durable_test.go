package durable_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/durable"
)

func TestWriteReplacesOrLeavesAlone(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	g.Expect(durable.WriteFile(p, []byte("old"), 0o640)).To(Succeed())

	// A failed write leaves the old content and no temporary file.
	err := durable.Write(p, 0o640, func(w io.Writer) error {
		_, _ = w.Write([]byte("half"))
		return errors.New("stopped")
	})
	g.Expect(err).To(MatchError("stopped"))
	g.Expect(os.ReadFile(p)).To(Equal([]byte("old")))
	entries, _ := os.ReadDir(dir)
	g.Expect(entries).To(HaveLen(1))

	g.Expect(durable.Write(p, 0o640, func(w io.Writer) error {
		_, err := w.Write([]byte("new"))
		return err
	})).To(Succeed())
	g.Expect(os.ReadFile(p)).To(Equal([]byte("new")))
	info, err := os.Stat(p)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.Mode().Perm()).To(Equal(os.FileMode(0o640)))
}

func TestRemoveTemporary(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(os.WriteFile(filepath.Join(dir, ".f12345"), nil, 0o600)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(dir, "kept"), nil, 0o600)).To(Succeed())
	g.Expect(os.Mkdir(filepath.Join(dir, ".folder"), 0o700)).To(Succeed())
	g.Expect(durable.RemoveTemporary(dir)).To(Equal(1))
	g.Expect(filepath.Join(dir, "kept")).To(BeAnExistingFile())
	g.Expect(filepath.Join(dir, ".folder")).To(BeADirectory())
	g.Expect(durable.Remove(filepath.Join(dir, "kept"))).To(Succeed())
	g.Expect(durable.Remove(filepath.Join(dir, "kept"))).To(Succeed())
	n, err := durable.RemoveTemporary(filepath.Join(dir, "absent"))
	g.Expect(n, err).To(BeZero())
}
