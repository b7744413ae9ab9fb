//! The row actions: each changes the run's data and emits its row's one event.

use super::data::{Ctx, FallbackChoice, RunCore, node_of};
use super::event::{EventBody, FollowUp, PlanPhase, RunError, RunOutcome, Trigger, TriggerSource};
use super::vocab::{PendingHitl, PendingOutput, Purpose, RunInput};

/// `start`: ask for the first plan.
pub fn start(core: &mut RunCore, ctx: &mut Ctx, _: &RunInput) {
    core.purpose = Purpose::Initial;
    core.attempt = 1;
    let body = EventBody::PlanRequested {
        phase: PlanPhase::Initial,
        attempt: 1,
        trigger: None,
        error: None,
    };
    core.emit(ctx, None, body);
}

/// Keep the planner's answer for validation.
pub fn plan_generated(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::PlanReturned {
        output,
        planner,
        latency_ms,
        usage,
        model,
        cost,
        diagnostics,
    } = input
    else {
        return;
    };
    core.pending_output = Some(PendingOutput {
        output: output.clone(),
        diagnostics: diagnostics.clone(),
    });
    core.last_error = None;
    let body = EventBody::PlanGenerated {
        phase: core.phase(),
        attempt: core.attempt,
        planner: planner.clone(),
        output: output.clone(),
        latency_ms: *latency_ms,
        usage: *usage,
        model: model.clone(),
        cost: *cost,
        diagnostics: diagnostics.clone(),
    };
    core.emit(ctx, None, body);
}

/// Ask the planner again after a failed call.
pub fn retry_planner(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::PlannerFailed { error, .. } = input else {
        return;
    };
    core.attempt += 1;
    core.last_error = Some(error.clone());
    let body = EventBody::PlanRequested {
        phase: core.phase(),
        attempt: core.attempt,
        trigger: core.trigger.clone(),
        error: Some(error.clone()),
    };
    core.emit(ctx, None, body);
}

/// The planner failed for good.
pub fn planner_gave_up(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::PlannerFailed { error, retryable } = input else {
        return;
    };
    let code = if *retryable {
        "PLANNER_ATTEMPTS_EXHAUSTED"
    } else {
        "PLANNER_FAILED"
    };
    let message = format!("planner failed on attempt {}: {error}", core.attempt);
    core.fail(ctx, code, message);
}

/// Version 1 is accepted.
pub fn accept_draft(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::DraftValid {
        nodes,
        edges,
        warnings,
    } = input
    else {
        return;
    };
    core.pending_output = None;
    core.diagnostics.clear();
    core.plan_version = 1;
    let body = EventBody::PlanAccepted {
        version: 1,
        nodes: *nodes,
        edges: *edges,
        warnings: warnings.clone(),
    };
    core.emit(ctx, None, body);
}

/// The merged delta becomes the next version.
pub fn update_plan(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::DeltaValid { diff, warnings } = input else {
        return;
    };
    let trigger = core.trigger.take().unwrap_or(Trigger {
        source: TriggerSource::Operator,
        policy_id: None,
        node_id: None,
        reason: String::new(),
    });
    core.pending_output = None;
    core.diagnostics.clear();
    let previous_version = core.plan_version;
    core.plan_version += 1;
    let body = EventBody::PlanUpdated {
        previous_version,
        version: core.plan_version,
        diff: diff.clone(),
        trigger,
        warnings: warnings.clone(),
    };
    core.emit(ctx, None, body);
}

/// The draft or delta goes back to the planner with its diagnostics.
pub fn reject_plan(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::PlanInvalid { diagnostics } = input else {
        return;
    };
    let (phase, attempt) = (core.phase(), core.attempt);
    core.pending_output = None;
    core.attempt += 1;
    core.diagnostics = diagnostics.clone();
    let body = EventBody::PlanRejected {
        phase,
        attempt,
        diagnostics: diagnostics.clone(),
    };
    core.emit(ctx, None, body);
}

/// No valid plan within the attempts.
pub fn plans_exhausted(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::PlanInvalid { diagnostics } = input else {
        return;
    };
    core.pending_output = None;
    let codes: Vec<&str> = diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.code.as_str())
        .collect();
    let message = format!(
        "no valid plan after {} attempts; last diagnostics: {}",
        core.attempt,
        codes.join(", ")
    );
    core.fail(ctx, "PLAN_ATTEMPTS_EXHAUSTED", message);
}

/// A ready node goes in flight.
pub fn start_node(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::NodeDispatched {
        node_id,
        capability_id,
        attempt,
    } = input
    else {
        return;
    };
    core.in_flight.insert(node_id.clone(), *attempt);
    let body = EventBody::NodeStart {
        attempt: *attempt,
        capability_id: capability_id.clone(),
        idempotency_key: format!("{}/{node_id}", core.run_id),
    };
    core.emit(ctx, Some(node_id), body);
}

/// A node result leaves flight: complete, error or invalid output.
pub fn end_node(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let node_id = node_of(input).to_owned();
    let Some(attempt) = core.in_flight.remove(&node_id) else {
        return;
    };
    let body = match input {
        RunInput::NodeSucceeded {
            output,
            duration_us,
            spend,
            ..
        } => EventBody::NodeComplete {
            attempt,
            output: output.clone(),
            duration_us: *duration_us,
            spend: *spend,
        },
        RunInput::NodeFailed {
            error,
            will_retry,
            spend,
            retry_at,
            ..
        } => {
            if !will_retry {
                core.exhausted
                    .insert(node_id.clone(), (attempt, error.message.clone()));
            }
            EventBody::NodeError {
                attempt,
                error: error.clone(),
                will_retry: *will_retry,
                retry_at: retry_at.filter(|_| *will_retry),
                spend: *spend,
            }
        }
        RunInput::OutputInvalid {
            errors,
            will_retry,
            spend,
            retry_at,
            ..
        } => {
            if !will_retry {
                core.exhausted
                    .insert(node_id.clone(), (attempt, errors.join("; ")));
            }
            EventBody::ValidationError {
                attempt,
                errors: errors.clone(),
                will_retry: *will_retry,
                retry_at: retry_at.filter(|_| *will_retry),
                spend: *spend,
            }
        }
        _ => return,
    };
    core.emit(ctx, Some(&node_id), body);
}

/// A human skipped a node whose last attempt failed: it completes with the supplied output,
/// under its last attempt.
pub fn skip_node(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::NodeSkipped { node_id, output } = input else {
        return;
    };
    let Some((attempt, _)) = core.exhausted.remove(node_id) else {
        return;
    };
    let body = EventBody::NodeComplete {
        attempt,
        output: output.clone(),
        duration_us: 0,
        spend: None,
    };
    core.emit(ctx, Some(node_id), body);
}

/// The human chose to fail (or rejected) a fallback request: the node failed for good.
pub fn node_gave_up(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::HitlAnswered {
        request_id, text, ..
    } = input
    else {
        return;
    };
    let Some(node) = core.fallback_node().map(str::to_owned) else {
        return;
    };
    let (attempt, error) = core.exhausted.get(&node).cloned().unwrap_or_default();
    let by = match text.as_deref() {
        Some("fail") | None => String::new(),
        Some(t) => format!(": {t}"),
    };
    let message = format!(
        "node `{node}` failed after its last attempt ({attempt}): {error}; \
         hitl request `{request_id}` ended the run{by}"
    );
    core.fail(ctx, "NODE_FAILED", message);
}

/// A policy stops dispatch for a replan (or a pause).
pub fn policy_triggered(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let (action, policy_id, trigger) = match input {
        RunInput::PolicyReplan { policy_id, trigger } => ("replan", policy_id, trigger),
        RunInput::PolicyPause { policy_id, trigger } => ("pause", policy_id, trigger),
        _ => return,
    };
    if action == "replan" {
        core.trigger = Some(trigger.clone());
    }
    let body = EventBody::PolicyTriggered {
        policy_id: policy_id.clone(),
        action: action.to_owned(),
        trigger: trigger.clone(),
    };
    core.emit(ctx, None, body);
}

/// A replan was asked with none left.
pub fn replans_exhausted(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::PolicyReplan { trigger, .. } = input else {
        return;
    };
    let message = replans_message(core, trigger);
    core.fail(ctx, "REPLANS_EXHAUSTED", message);
}

/// A human is asked; the run waits.
pub fn ask_human(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::HitlRequested {
        request_id,
        kind,
        question,
        policy_id,
        node_id,
        options,
        contract_summary,
        on_approve,
        on_reject,
    } = input
    else {
        return;
    };
    core.hitl = Some(PendingHitl {
        request_id: request_id.clone(),
        policy_id: policy_id.clone(),
        node_id: node_id.clone(),
        on_approve: *on_approve,
        on_reject: *on_reject,
    });
    let body = EventBody::HitlRequest {
        request_id: request_id.clone(),
        kind: *kind,
        question: question.clone(),
        policy_id: policy_id.clone(),
        options: options.clone(),
        contract_summary: contract_summary.clone(),
        on_approve: *on_approve,
        on_reject: *on_reject,
    };
    core.emit(ctx, node_id.as_deref(), body);
}

/// An operator pauses.
pub fn pause(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::OperatorPause { reason } = input else {
        return;
    };
    let body = EventBody::RunPaused {
        reason: reason.clone(),
    };
    core.emit(ctx, None, body);
}

/// In-flight work drained: ask for a delta.
pub fn request_delta(core: &mut RunCore, ctx: &mut Ctx, _: &RunInput) {
    core.replans += 1;
    core.purpose = Purpose::Replan;
    core.attempt = 1;
    core.diagnostics.clear();
    let body = EventBody::PlanRequested {
        phase: PlanPhase::Replan,
        attempt: 1,
        trigger: core.trigger.clone(),
        error: None,
    };
    core.emit(ctx, None, body);
}

/// The human answered: continue or replan (the rows' targets say which).
pub fn resolve_hitl(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let choice = core.fallback_choice(input).and_then(Result::ok);
    let fallback = core.fallback_node().map(str::to_owned);
    let (Ok((next, _)), Some(pending)) = (core.follow_up(input), core.hitl.take()) else {
        return;
    };
    let RunInput::HitlAnswered {
        request_id,
        decision,
        text,
        responder,
    } = input
    else {
        return;
    };
    if let (Some(node), Some(choice)) = (fallback, choice) {
        // A skip keeps the node exhausted until its `node_skipped` completes it.
        if choice != FallbackChoice::Skip
            && let Some((attempt, error)) = core.exhausted.remove(&node)
            && choice == FallbackChoice::Replan
        {
            core.trigger = Some(Trigger {
                source: TriggerSource::Hitl,
                policy_id: None,
                node_id: Some(node.clone()),
                reason: format!("node `{node}` failed after its last attempt ({attempt}): {error}"),
            });
        }
        let body = EventBody::HitlResolved {
            request_id: request_id.clone(),
            decision: *decision,
            text: text.clone(),
            responder: responder.clone(),
            next,
        };
        return core.emit(ctx, Some(&node), body);
    }
    if next == FollowUp::Replan {
        core.trigger = Some(Trigger {
            source: TriggerSource::Hitl,
            policy_id: pending.policy_id.clone(),
            node_id: pending.node_id.clone(),
            reason: text
                .clone()
                .unwrap_or_else(|| format!("hitl request `{request_id}` answered")),
        });
    }
    let body = EventBody::HitlResolved {
        request_id: request_id.clone(),
        decision: *decision,
        text: text.clone(),
        responder: responder.clone(),
        next,
    };
    core.emit(ctx, pending.node_id.as_deref(), body);
}

/// The human's answer ends the run: a rejection, or a replan with none left.
pub fn hitl_ends_run(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let (Ok((next, _)), Some(pending)) = (core.follow_up(input), core.hitl.clone()) else {
        return;
    };
    let RunInput::HitlAnswered {
        request_id, text, ..
    } = input
    else {
        return;
    };
    if next == FollowUp::Replan {
        let trigger = Trigger {
            source: TriggerSource::Hitl,
            policy_id: pending.policy_id,
            node_id: pending.node_id,
            reason: String::new(),
        };
        let message = replans_message(core, &trigger);
        return core.fail(ctx, "REPLANS_EXHAUSTED", message);
    }
    let message = match text {
        Some(t) => format!("hitl request `{request_id}` rejected: {t}"),
        None => format!("hitl request `{request_id}` rejected"),
    };
    core.fail(ctx, "HITL_REJECTED", message);
}

/// An operator resumes.
pub fn resume(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::Resume { reason, budgets } = input else {
        return;
    };
    let body = EventBody::RunResumed {
        reason: reason.clone(),
        budgets: budgets.clone(),
    };
    core.emit(ctx, None, body);
}

/// Every node completed: the run's output.
pub fn complete(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::AllDone { output } = input else {
        return;
    };
    let none = RunError::new("", "");
    core.finish(ctx, RunOutcome::Completed, Some(output.clone()), none);
}

/// A fatal error ends the run.
pub fn fail(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::Fail { error } = input else {
        return;
    };
    core.finish(ctx, RunOutcome::Failed, None, error.clone());
}

/// A cancel ends the run.
pub fn cancel(core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let RunInput::Cancel { reason } = input else {
        return;
    };
    let error = RunError::new("CANCELLED", reason.clone());
    core.finish(ctx, RunOutcome::Cancelled, None, error);
}

fn replans_message(core: &RunCore, trigger: &Trigger) -> String {
    let by = match (&trigger.policy_id, trigger.source) {
        (Some(p), _) => format!("policy `{p}`"),
        (None, TriggerSource::Hitl) => "a hitl answer".to_owned(),
        (None, TriggerSource::Signal) => "a signal".to_owned(),
        (None, TriggerSource::Operator) => "an operator".to_owned(),
        (None, TriggerSource::Policy) => "a policy".to_owned(),
    };
    format!(
        "replan asked by {by} but the run already used {} of {} replans",
        core.replans, core.limits.max_replans
    )
}
