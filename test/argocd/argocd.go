// Package argocd runs the Argo CD health check shipped in charts/imageguard/argocd the way Argo CD
// does (gopher-lua, the object as the global obj), for tests of objects written by hand and by
// the controller.
package argocd

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/imageguard/imageguard/internal/testenv"
)

// Script returns the health check's Lua source.
func Script() (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	raw, err := os.ReadFile(filepath.Join(root, "charts", "imageguard", "argocd", "health.lua"))
	return string(raw), err
}

// Health runs script on obj (decoded JSON) and returns the status and message it gives.
func Health(script string, obj map[string]any) (string, string, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return "", "", fmt.Errorf("the health script failed: %w", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the health script returned %v, not a table", L.Get(-1))
	}
	return ret.RawGetString("status").String(), ret.RawGetString("message").String(), nil
}

// HealthOf runs the shipped script on an API object, as Argo CD reads it from the API server.
func HealthOf(obj runtime.Object) (string, string, error) {
	script, err := Script()
	if err != nil {
		return "", "", err
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		return "", "", err
	}
	var decoded map[string]any
	if err := json.Unmarshal(raw, &decoded); err != nil {
		return "", "", err
	}
	return Health(script, decoded)
}

// toLua converts decoded JSON to Lua values, numbers as Lua numbers, as Argo CD's conversion does.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, val := range v {
			t.RawSetString(k, toLua(L, val))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, val := range v {
			t.Append(toLua(L, val))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case nil:
		return lua.LNil
	}
	return lua.LNil
}
