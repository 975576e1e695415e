//! Which expectation a run of one class is compared with: one place, used before a scenario
//! runs (to skip what cannot be judged here) and after it (see the module docs of
//! [`super`]).
use crate::env::EnvClass;
use crate::harness::store::{Expectation, GoldenScenario};
use crate::harness::suite::{CrossClass, Scenario};

use super::Match;

/// The producer of the expectations `reprodiff bless` writes.
pub const BLESSED: &str = "reprodiff";

/// Why a run of some class has no expectation to be judged by.
#[derive(Debug, Clone, PartialEq)]
pub enum NoAuthority {
    /// The suite checks the scenario on its own class only (its reason), and this class has no
    /// expectation.
    OwnClassOnly(String),
    /// No expectation the scenario's cross-class rule can use (or it has no rule): why.
    NoExpectation(String),
}

/// The expectations a run of one class is compared with.
#[derive(Debug)]
pub struct Choice<'a> {
    /// What diffusers (or a publication) says: this class's oracle expectation, else a
    /// published one, else the nearest recorded class the scenario's cross-class rule can use.
    pub authority: std::result::Result<(&'a Expectation, Match), NoAuthority>,
    /// This class's own expectation made by `reprodiff bless` where the authority is another:
    /// an extra exact check, never a replacement for the comparison with diffusers.
    pub blessed: Option<&'a Expectation>,
}

/// Chooses what a run of `class` is compared with (see the module docs). One place, used both
/// before a scenario runs (`harness::session::plan`) and after ([`super::compare`]).
pub fn choose<'a>(golden: &'a GoldenScenario, class: &EnvClass, scenario: &Scenario) -> Choice<'a> {
    let is_blessed = |e: &Expectation| e.provenance.producer == BLESSED;
    let own = golden.expectation(class);
    let authorities: Vec<&EnvClass> = golden
        .expectations
        .iter()
        .filter(|e| !is_blessed(e))
        .map(|e| &e.class)
        .collect();
    if authorities.is_empty() {
        // Only reprodiff's own expectations (kernels with no diffusers counterpart).
        return Choice {
            authority: own.map(|e| (e, Match::SameClass)).ok_or_else(|| {
                NoAuthority::NoExpectation(format!(
                    "the golden holds only expectations reprodiff blessed, none for this host's \
                     class {class}"
                ))
            }),
            blessed: None,
        };
    }
    let blessed = own.filter(|e| is_blessed(e));
    let pick = |authority| Choice { authority, blessed };
    if let Some(e) = own.filter(|e| !is_blessed(e)) {
        return pick(Ok((e, Match::SameClass)));
    }
    if let Some(e) = golden.expectation(&EnvClass::Any) {
        return pick(Ok((e, Match::Published)));
    }
    let nearest = |usable: Vec<&EnvClass>| {
        class
            .nearest(usable)
            .and_then(|c| golden.expectation(c))
            .map(|e| (e, Match::NearestClass))
    };
    if scenario.run.is_rerun_difference() {
        return pick(Ok(nearest(authorities).expect("authorities is not empty")));
    }
    if let Some(reason) = &scenario.own_class_only {
        return pick(Err(NoAuthority::OwnClassOnly(reason.clone())));
    }
    let found = match scenario.cross_class {
        None => {
            return pick(Err(NoAuthority::NoExpectation(format!(
                "no expectation for this host's class {class} and no cross_class rule in the \
                 suite: record this class with the oracle (ci/oracle/run.sh) on such a host"
            ))))
        }
        Some(CrossClass::Bits) => nearest(
            authorities
                .into_iter()
                .filter(|c| class.shares(c, crate::env::BITS_DEPEND_ON))
                .collect(),
        ),
        Some(CrossClass::Truth { .. }) => nearest(authorities),
    };
    pick(found.ok_or_else(|| {
        NoAuthority::NoExpectation(format!(
            "the suite's bits rule compares only with a class of the same {}, and none was \
             recorded for this host's class {class}: record it with the oracle (ci/oracle/run.sh, \
             which any host can run under ATEN_CPU_CAPABILITY=...)",
            crate::env::BITS_DEPEND_ON.join(", ")
        ))
    }))
}
