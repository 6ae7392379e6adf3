package vap

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apiserver/pkg/cel/environment"
)

// minVersion is the oldest Kubernetes the generated policies are for: ValidatingAdmissionPolicy
// is GA and CEL has ip() since 1.30. The expressions are compiled in its environment, so that
// nothing newer slips in.
var minVersion = version.MajorMinor(1, 30)

// evaluator evaluates a generated ValidatingAdmissionPolicy as the API server does, in the CEL
// environment of minVersion: match conditions, then the validation, with the variables evaluated
// lazily, when first read (an error is the variable's value, surfacing only where it is read). It is for fast, broad tests; the API server itself is the authority
// (apiserver_test.go).
type evaluator struct {
	env      *cel.Env
	vap      *admissionregistrationv1.ValidatingAdmissionPolicy
	programs map[string]cel.Program
	// evaluated are the variables the last admit evaluated, in order, each time it did.
	evaluated []string
}

func newEvaluator(t testing.TB, vap *admissionregistrationv1.ValidatingAdmissionPolicy) *evaluator {
	t.Helper()
	e := &evaluator{env: newEvaluatorEnv(t, vap), vap: vap, programs: map[string]cel.Program{}}
	var exprs []string
	for _, c := range vap.Spec.MatchConditions {
		exprs = append(exprs, c.Expression)
	}
	for _, v := range vap.Spec.Variables {
		exprs = append(exprs, v.Expression)
	}
	for _, v := range vap.Spec.Validations {
		exprs = append(exprs, v.Expression, v.MessageExpression)
	}
	for _, expr := range exprs {
		ast, iss := e.env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("compiling %s: %v", expr, iss.Err())
		}
		prg, err := e.env.Program(ast, cel.CostLimit(1000000))
		if err != nil {
			t.Fatalf("program %s: %v", expr, err)
		}
		e.programs[expr] = prg
	}
	return e
}

func (e *evaluator) eval(expr string, act map[string]any) ref.Val {
	out, _, err := e.programs[expr].Eval(act)
	if err != nil {
		return types.NewErr("%v", err)
	}
	return out
}

// newEvaluatorEnv is newEvaluator's CEL environment, without compiling anything.
func newEvaluatorEnv(t testing.TB, vap *admissionregistrationv1.ValidatingAdmissionPolicy) *cel.Env {
	t.Helper()
	decls := []cel.EnvOption{
		cel.Variable("object", cel.DynType), cel.Variable("oldObject", cel.DynType), cel.Variable("request", cel.DynType),
	}
	for _, v := range vap.Spec.Variables {
		decls = append(decls, cel.Variable("variables."+v.Name, cel.DynType))
	}
	set, err := environment.MustBaseEnvSet(minVersion).Extend(environment.VersionedOptions{IntroducedVersion: minVersion, EnvOptions: decls})
	if err != nil {
		t.Fatal(err)
	}
	return set.NewExpressionsEnv()
}

// admit returns whether the request passes, and the message when it does not. A match condition
// that does not hold admits; an error follows the failure policy.
func (e *evaluator) admit(t testing.TB, operation, resource, user string, obj, old any) (bool, string) {
	t.Helper()
	act := map[string]any{
		"object": toJSONValue(t, obj), "oldObject": toJSONValue(t, old),
		"request": map[string]any{"operation": operation, "resource": map[string]any{"resource": resource},
			"userInfo": map[string]any{"username": user}},
	}
	failOpen := e.vap.Spec.FailurePolicy != nil && *e.vap.Spec.FailurePolicy == admissionregistrationv1.Ignore
	for _, c := range e.vap.Spec.MatchConditions {
		out := e.eval(c.Expression, act)
		if types.IsError(out) {
			return failOpen, "match condition " + c.Name + ": " + fmt.Sprint(out)
		}
		if out != types.True {
			return true, ""
		}
	}
	e.evaluated = nil
	// Variables are evaluated lazily, once per context, when first read.
	bind := func(act map[string]any) map[string]any {
		for _, v := range e.vap.Spec.Variables {
			var once sync.Once
			var val ref.Val
			act["variables."+v.Name] = func() ref.Val {
				once.Do(func() {
					val = e.eval(v.Expression, act)
					e.evaluated = append(e.evaluated, v.Name)
				})
				return val
			}
		}
		return act
	}
	bind(act)
	for _, v := range e.vap.Spec.Validations {
		out := e.eval(v.Expression, act)
		// The API server evaluates the message of every request, in a context of its own.
		msg := e.eval(v.MessageExpression, bind(maps.Clone(act)))
		if types.IsError(out) {
			return failOpen, "validation: " + fmt.Sprint(out)
		}
		if out != types.True {
			if types.IsError(msg) {
				return false, v.Message
			}
			return false, msg.Value().(string)
		}
	}
	return true, ""
}

// toJSONValue is obj as the API server gives it to CEL: its JSON.
func toJSONValue(t testing.TB, obj any) any {
	t.Helper()
	if obj == nil {
		return nil
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
